"""`chimed <command> [hydra overrides...]`: the one console script.

Commands that need several processes re-launch themselves under torchrun, so a user types the
same line on a laptop and inside an sbatch script.
"""

from __future__ import annotations

import importlib
import os
import sys

from megatron_chimed.launch.torchrun import torchrun

# command -> (module with main(argv) -> int, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": ("megatron_chimed.pipeline.run", "convert, CPT, SFT, RM, RS, export, evaluate"),
    "train": ("megatron_chimed.train", "one stage under torchrun: stage=cpt|sft|rm|rs"),
    "generate": ("megatron_chimed.generation.chat", "chat or batch JSONL generation"),
    "eval": ("megatron_chimed.eval.cli", "the paper's evaluation tasks"),
    "smoke": ("megatron_chimed.smoke", "build the model, one forward/backward"),
    "gpu-check": ("megatron_chimed.gpu_check.cli", "GPU acceptance check of a new node"),
    "plan": ("megatron_chimed.plan.cli", "does a config fit on a GPU, how fast: before sbatch"),
    "plot": ("megatron_chimed.plot", "loss curves of any runs (metrics.jsonl) in one PNG"),
}

UNDER_TORCHRUN = {"train", "smoke"}  # entry points that expect torchrun's environment
# Commands whose arguments are Hydra overrides of conf/ (the others parse their own flags).
HYDRA_EXAMPLES = {
    "pipeline": "chimed pipeline experiment=demo run_dir=runs/demo",
    "train": "chimed train stage=sft parallel=tp2_cpu training=tiny run_dir=runs/sft "
    "checkpoint.load=runs/cpt/checkpoints",
    "smoke": "chimed smoke model=tiny parallel=tp2_cpu",
}


def usage() -> str:
    rows = "\n".join(f"  {name:<9} {what}" for name, (_, what) in COMMANDS.items())
    return f"usage: chimed <command> [key=value ...]\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    """Dispatch; a config error is one line naming the key (CHIMED_DEBUG=1: the traceback)."""
    from megatron_chimed.config import ConfigError

    try:
        return _dispatch(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        if os.environ.get("CHIMED_DEBUG"):
            raise
        command = (argv or sys.argv[1:] or ["?"])[0]
        print(f"chimed {command}: {err}", file=sys.stderr)
        return 2


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"chimed: unknown command {command!r}\n{usage()}", file=sys.stderr)
        return 2
    if command in HYDRA_EXAMPLES and any(a in ("-h", "--help") for a in rest):
        print(command_help(command))
        return 0
    if command in HYDRA_EXAMPLES and rest[:2] == ["--cfg", "job"]:
        from omegaconf import OmegaConf

        from megatron_chimed.config import load

        print(OmegaConf.to_yaml(OmegaConf.structured(load(rest[2:]))), end="")
        return 0
    if command in UNDER_TORCHRUN:
        from megatron_chimed.config import load

        world = _world_for(load(rest))
        return torchrun(COMMANDS[command][0], world, rest, preemptible=command == "train")
    return int(importlib.import_module(COMMANDS[command][0]).main(rest) or 0)


def command_help(command: str) -> str:
    """What a Hydra command does, its config groups with their options, and an example."""
    from megatron_chimed.config import CONF_DIR

    groups = sorted(p for p in CONF_DIR.iterdir() if p.is_dir())
    rows = "\n".join(
        f"  {g.name + '=':<12} {', '.join(sorted(f.stem for f in g.glob('*.yaml')))}"
        for g in groups
    )
    return (
        f"usage: chimed {command} [group=option ...] [key=value ...]\n"
        f"{COMMANDS[command][1]}\n\nconfig groups (conf/<group>/<option>.yaml):\n{rows}\n\n"
        "any key of the composed config can be set, e.g. training.train_iters=100;\n"
        f"`chimed {command} --cfg job [overrides]` prints the composed config.\n\n"
        f"example:\n  {HYDRA_EXAMPLES[command]}\n"
    )


def _world_for(cfg) -> int:
    """Ranks on this node: the launcher's, or one TP group."""
    return (
        cfg.launcher.nproc_per_node
        if cfg.launcher.kind == "torchrun"
        else (cfg.parallel.tensor_model_parallel_size)
    )


if __name__ == "__main__":
    sys.exit(main())
