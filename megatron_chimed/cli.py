"""`chimed <command> [hydra overrides...]`: the one console script.

Commands that need several processes re-launch themselves under torchrun, so a user types the
same line on a laptop and inside an sbatch script.
"""

from __future__ import annotations

import importlib
import os
import sys

from megatron_chimed.launch.sweep import MULTIRUN_FLAGS, split_multirun
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
SWEEPS = ("train", "pipeline")  # commands that take -m / --multirun (launch/sweep.py)
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
    """Dispatch; a user error (config, data, path) is one line naming the key or the file and
    line, exit status 2 (launch/rank_main.py; CHIMED_DEBUG=1: the traceback); Ctrl-C in a
    command that runs in this process is one line too, exit status 130."""
    from megatron_chimed.launch.rank_main import report_errors

    args = sys.argv[1:] if argv is None else argv
    name = f"chimed {(args or ['?'])[0]}"
    try:
        return report_errors(name, lambda: _dispatch(args))
    except KeyboardInterrupt:
        if os.environ.get("CHIMED_DEBUG"):
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


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
    multirun, rest = split_multirun(rest)
    if multirun:
        if command not in SWEEPS:
            print(f"chimed {command}: -m/--multirun sweeps {' and '.join(SWEEPS)} only",
                  file=sys.stderr)  # fmt: skip
            return 2
        from megatron_chimed.launch.sweep import run_sweep

        return run_sweep(command, rest, _dispatch)
    if command in UNDER_TORCHRUN:
        from megatron_chimed.config import load

        world = _world_for(load(rest))
        return torchrun(COMMANDS[command][0], world, rest, preemptible=command == "train",
                        name=f"chimed {command}")  # fmt: skip
    from megatron_chimed import run_log

    run_log.quiet_console()  # before the command's imports raise megatron-core's warnings
    main = importlib.import_module(COMMANDS[command][0]).main
    if command == "generate":  # batch mode: the log beside its output (generation/chat.py)
        output = _flag_value(rest, "--output")
        with run_log.command_log(run_log.log_path_for(output) if output else None):
            return int(main(rest) or 0)
    return int(main(rest) or 0)


def _flag_value(args: list[str], flag: str) -> str | None:
    """The value of `flag VALUE` or `flag=VALUE` among argparse-style arguments."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.partition("=")[2]
    return None


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
        + (_SWEEP_HELP.format(command=command) if command in SWEEPS else "")
    )


_SWEEP_HELP = """
sweeps ({flags}): one run per point, Hydra's override syntax, every combination:
  chimed {command} -m optim.lr=1e-4,2e-4 seed=range(1,3) run_dir=runs/sweep
  key=a,b or key=choice(a,b) lists values, key=range(start,stop[,step]) counts (stop
  excluded). Point i runs in RUN_DIR/<i>_<key-value_...>, one after another (`point i/N`); a
  failing point is reported and the sweep goes on; a summary ends it (RUN_DIR/sweep.json), exit
  status 1 if any point failed. With launcher=slurm, chimed train submits one job per point
  through launch/submit.py.
""".replace("{flags}", "/".join(MULTIRUN_FLAGS))


def _world_for(cfg) -> int:
    """Ranks on this node: the launcher's, or one TP group."""
    return (
        cfg.launcher.nproc_per_node
        if cfg.launcher.kind == "torchrun"
        else (cfg.parallel.tensor_model_parallel_size)
    )


if __name__ == "__main__":
    sys.exit(main())
