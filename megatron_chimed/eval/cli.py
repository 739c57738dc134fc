"""`chimed eval`: the paper's evaluation (one task or the suite) on a Megatron checkpoint or on
an HF export; writes `{run_dir}/{name}.json` and `{run_dir}/{name}.md` (mean and std over seeds).

    chimed eval checkpoint=CKPT +eval=suite parallel=tp2_cpu run_dir=runs/eval
    chimed eval checkpoint=CKPT +eval=ceval parallel=tp2 launcher=torchrun launcher.gpus_per_node=8
    chimed eval hf=HF_DIR +eval=suite run_dir=runs/eval          # one process, transformers

`checkpoint=` (a root with `latest`, or an `iter_*` folder) or `hf=` names the model;
`tokenizer=DIR` (or `--tokenizer DIR`) uses that tokenizer folder instead of the model's own. Every
other argument is a Hydra override of conf/, e.g. `eval.tasks.ceval.mode=generate`,
`precision=fp32`, `eval.seeds=[0,1,2]`. The log is `{run_dir}/eval.log`; the console shows each
task as it starts and ends (`task i/N name ... done in Xs, metric=...`) and, in a long task, how
many questions are done. Started outside torchrun, the command re-launches itself
under torchrun with `launcher.nproc_per_node` ranks (launcher=torchrun) or one rank per TP shard.
In an sbatch script, or by hand, start the ranks yourself:

    torchrun --nproc_per_node=N -m megatron_chimed.eval.cli checkpoint=CKPT +eval=suite ...

The ranks form TP groups of `parallel.tensor_model_parallel_size`; each data-parallel rank
evaluates a strided shard of every task's prompts, and the outputs are gathered over the DP
group, so every rank computes the same metrics and global rank 0 writes the files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from megatron_chimed.config import ConfigError, RunConfig, load
from megatron_chimed.config.eval import EvalSuiteConfig, EvalTaskConfig
from megatron_chimed.eval.model_api import HFEvalModel
from megatron_chimed.eval.runner import run_eval
from megatron_chimed.model.builder import DTYPES

MODEL_KEYS = ("checkpoint", "hf")  # the command's own arguments, not Hydra keys


def split_model_args(argv: list[str]) -> tuple[str, Path, list[str]]:
    """(`checkpoint` or `hf`, its path, the Hydra overrides). `checkpoint=` is taken here
    because conf/ already has a `checkpoint` group (the training checkpoint settings)."""
    found: dict[str, Path] = {}
    overrides = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in MODEL_KEYS:
            found[key] = Path(value)
        else:
            overrides.append(arg)
    if len(found) != 1:
        raise ConfigError(
            "chimed eval: name the model with exactly one of checkpoint=PATH or hf=PATH"
        )
    [(kind, path)] = found.items()
    if not path.exists():
        raise FileNotFoundError(f"chimed eval: {kind}={path} does not exist")
    return kind, path, overrides


def split_tokenizer_arg(argv: list[str]) -> tuple[Path | None, list[str]]:
    """(the `tokenizer=DIR` / `--tokenizer DIR` folder or None, the other arguments)."""
    rest: list[str] = []
    found: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--tokenizer":
            found.append(next(args, ""))
        elif arg.startswith(("tokenizer=", "--tokenizer=")):
            found.append(arg.partition("=")[2])
        else:
            rest.append(arg)
    if not found:
        return None, rest
    if len(found) > 1 or not found[0]:
        raise ConfigError("chimed eval: name one tokenizer folder: tokenizer=DIR")
    path = Path(found[0])
    if not path.is_dir():
        raise FileNotFoundError(f"chimed eval: tokenizer={path} is not a folder")
    return path, rest


def eval_config(cfg: RunConfig) -> EvalSuiteConfig | EvalTaskConfig:
    """The typed `eval` section (config/eval.py), or a ConfigError when none was selected."""
    if cfg.eval is None:
        raise ConfigError(
            "chimed eval: no task selected; add +eval=suite or +eval=<task> "
            "(one of conf/eval/*.yaml)"
        )
    return cfg.eval


def processes(cfg: RunConfig, kind: str) -> int:
    """How many ranks to start when not already under torchrun."""
    if kind == "hf":
        return 1  # transformers runs the whole model in one process
    if cfg.launcher.kind == "slurm":
        raise ConfigError(
            "chimed eval does not submit Slurm jobs: run the torchrun line of "
            "`python -m megatron_chimed.eval.cli --help` in your sbatch script"
        )
    if cfg.launcher.kind == "torchrun":
        return cfg.launcher.nproc_per_node
    return cfg.parallel.tensor_model_parallel_size


def evaluate_hf(cfg: RunConfig, hf_dir: Path, tokenizer: Path | None = None) -> dict[str, Any]:
    """The suite on a Hugging Face export, in this process."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError("chimed eval hf=...: runs in one process; start it without torchrun")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=DTYPES[cfg.precision])
    if torch.cuda.is_available():
        model = model.cuda()
    # Local files only; remote code is never trusted (AutoTokenizer's default).
    hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer or hf_dir, local_files_only=True)
    eval_model = HFEvalModel(model, hf_tokenizer)
    info = {"hf": str(hf_dir), "precision": cfg.precision}
    return run_eval(eval_config(cfg), eval_model, cfg.run_dir, run_info=info)


def evaluate_megatron(
    cfg: RunConfig, checkpoint: Path, tokenizer: Path | None = None
) -> dict[str, Any]:
    """The suite on a Megatron checkpoint: TP inside each rank's group, prompts sharded over DP."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_chimed.eval.megatron_model import MegatronLoglikelihood
    from megatron_chimed.generation.eval_model import MegatronEvalModel
    from megatron_chimed.generation.loading import load_for_generation
    from megatron_chimed.platform import destroy, initialize

    tp = cfg.parallel.tensor_model_parallel_size
    layout = initialize(tp, cfg.seed)
    try:
        model, loaded = load_for_generation(checkpoint, tp, cfg.precision, tokenizer)  # type: ignore[arg-type]
        group = parallel_state.get_data_parallel_group()

        def gather(local: list) -> list[list]:
            every: list[Any] = [None] * layout.data_parallel
            dist.all_gather_object(every, local, group=group)
            return every

        info = {
            "checkpoint": str(checkpoint),
            "precision": cfg.precision,
            "tensor_parallel": tp,
            "data_parallel": layout.data_parallel,
        }
        return run_eval(
            eval_config(cfg),
            # + continuation scores (protocol lm_eval) on the same shard
            MegatronLoglikelihood(MegatronEvalModel(model, loaded), model, loaded),
            cfg.run_dir if layout.rank == 0 else None,
            rank=parallel_state.get_data_parallel_rank(),
            world=layout.data_parallel,
            gather=gather,
            run_info=info,
        )
    finally:
        destroy()


def main(argv: list[str] | None = None) -> int:
    from megatron_chimed import run_log

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    tokenizer, model_args = split_tokenizer_arg(argv)
    kind, path, overrides = split_model_args(model_args)
    cfg = load(overrides)
    eval_config(cfg)  # fail on a missing task before starting any process
    nproc = processes(cfg, kind)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    # RUN_DIR/eval.log: this process's lines and, through CHIMED_LOG_FILE, its rank 0's.
    with run_log.command_log(Path(cfg.run_dir) / "eval.log" if rank0 else None, rank0):
        if "LOCAL_RANK" not in os.environ and nproc > 1:
            from megatron_chimed.generation.loading import checkpoint_tokenizer
            from megatron_chimed.launch.torchrun import torchrun

            checkpoint_tokenizer(path, tokenizer)  # a missing tokenizer fails before ranks start
            return torchrun("megatron_chimed.eval.cli", nproc, argv, name="chimed eval")
        if kind == "hf":
            result = evaluate_hf(cfg, path, tokenizer)
        else:
            result = evaluate_megatron(cfg, path, tokenizer)
        if "files" in result:
            files = result["files"]
            run_log.echo(Path(files["markdown"]).read_text(encoding="utf-8").rstrip())  # scores
            run_log.echo(f"chimed eval: wrote {files['json']} and {files['markdown']}")
            run_log.echo("chimed eval: predictions in " + ", ".join(files["predictions"]))
    return 0


if __name__ == "__main__":
    from megatron_chimed.launch.rank_main import report_errors

    sys.exit(report_errors("chimed eval", main))
