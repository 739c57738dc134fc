"""SFT on the project's training loop: N steps with validation and a save half-way, then a
resume from that save that must reproduce the second half; and which Adam ran (fused or not).

The loop is entered as the training tests and `chimed train` enter it: a RunConfig composed
from `conf/` with overrides, a stage, `training.loop.train`. Runs go to the check's work folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import torch.distributed as dist

from megatron_chimed.gpu_check.context import CheckContext, environment, release
from megatron_chimed.gpu_check.results import CheckResult, skipped, verdict
from megatron_chimed.stages.sft import SFTStage
from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA

# Resumed losses must equal the uninterrupted run's: the same weights, optimizer state, data
# and RNG (bitwise on the CPU). TE's attention backward adds with atomics unless told to be
# deterministic, which this check sets; the tolerance only absorbs what might remain. A resume
# bug (optimizer state or LR step lost, other samples) moves the losses by far more.
RESUME_TOLERANCE = 1e-3


def sft_config(ctx: CheckContext, run_dir: Path, *overrides: str):  # -> RunConfig
    """The SFT stage on the bundled sample data, from the tiny converted checkpoint, at the
    run's TP (sequence parallel with TE, as `parallel=tp2`), bf16, micro-batch 1."""
    from megatron_chimed import config

    dp = ctx.layout.data_parallel
    cfg = config.load(
        [
            "stage=sft",
            "data=sft_sample",
            "training=tiny",
            f"precision={ctx.precision}",
            f"run_dir={run_dir}",
            f"parallel.tensor_model_parallel_size={ctx.tp}",
            f"parallel.sequence_parallel={ctx.tp > 1 and ctx.te}",
            f"training.seq_length={ctx.sizes.seq_length}",
            "training.micro_batch_size=1",
            f"training.global_batch_size={2 * dp}",  # two micro-batches: accumulation runs
            "training.log_interval=1",
            "training.tensorboard=false",
            "training.dataloader_workers=0",
            f"checkpoint.load={ctx.converted}",
            f"data.cache_dir={ctx.work / 'sft_cache'}",
            "optim.lr=1e-3",
            "optim.warmup_iters=2",
            # The SFT stage refuses `isolated` packing with the local spec on a GPU (its fused
            # softmax ignores the block mask); without TE the loop is checked with `concat`.
            f"data.packing={'concat' if ctx.device.type == 'cuda' and not ctx.te else 'isolated'}",
            *overrides,
        ]
    )
    cfg.model = dataclasses.replace(ctx.model, transformer_impl=ctx.impl())
    # conf/data/sft_sample.yaml names the bundled files relative to the repository; the check
    # runs from anywhere, so point at the installed package's copy.
    for source in cfg.data["sources"]:
        source["path"] = str(SAMPLE_DATA / "sft" / Path(source["path"]).name)
    return cfg


class ValidatedSFT(SFTStage):
    """The SFT stage with a validation set (the stage has none): its packed rows in another
    seeded order, so the loop's periodic validation runs too."""

    def datasets(self, num_samples: tuple[int, int, int]):  # -> Datasets
        from megatron_chimed.data.sft import Epochs

        train, _, test = super().datasets(num_samples)
        return train, Epochs(train.rows, max(num_samples[1], 1), train.seed + 1), test


def _metrics(run_dir: Path, split: str) -> dict[int, float]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["iteration"]: r["lm_loss"] for r in rows if r["split"] == split}


def optimizer_kind(optimizer: object) -> tuple[str, bool]:
    """The Adam class that steps, and whether it is a fused one (TE or Apex)."""
    parts = getattr(optimizer, "chained_optimizers", [optimizer])
    inner = type(getattr(parts[0], "optimizer", parts[0]))
    name = f"{inner.__module__}.{inner.__qualname__}"
    return name, name.startswith(("transformer_engine.", "apex."))


def check_sft_training(ctx: CheckContext) -> CheckResult:
    from megatron_chimed.checkpoint import layout
    from megatron_chimed.tokenizer import load_tokenizer
    from megatron_chimed.training.loop import train

    if reason := ctx.no_fused_adam():
        return skipped("sft_train", reason)
    sizes = ctx.sizes
    n, half = sizes.train_iters, sizes.save_at
    tokenizer = load_tokenizer(ctx.tokenizer_dir)
    full_dir, resumed_dir = ctx.work / "sft_full", ctx.work / "sft_resumed"
    common = (
        f"training.train_iters={n}",
        f"checkpoint.save_interval={half}",
        f"training.eval_interval={sizes.eval_interval}",
        "training.eval_iters=1",
    )
    if ctx.rank0:  # a reused --work-dir would otherwise resume the previous check's runs
        for run_dir in (full_dir, resumed_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
    dist.barrier()
    with environment(NVTE_ALLOW_NONDETERMINISTIC_ALGO="0"):
        cfg = sft_config(ctx, full_dir, *common)
        full = train(cfg, ValidatedSFT(cfg, tokenizer), ctx.tokenizer_dir)
        adam, fused = optimizer_kind(full.optimizer)
        del full.model, full.optimizer
        release()
        # The resumed run starts from a copy of the half-way checkpoint in a run folder of
        # its own, so both runs' metrics stay whole.
        if ctx.rank0:
            root = resumed_dir / "checkpoints"
            saved = layout.iteration_dir(full_dir / "checkpoints", half)
            shutil.copytree(saved, layout.iteration_dir(root, half))
            shutil.copytree(full_dir / "checkpoints" / layout.TOKENIZER, root / layout.TOKENIZER)
            layout.write_latest(root, half)
        dist.barrier()
        cfg = sft_config(ctx, resumed_dir, *common)
        resumed = train(cfg, ValidatedSFT(cfg, tokenizer), ctx.tokenizer_dir)
        status = [full.status, full.iteration, resumed.status, resumed.iteration]
        del resumed
        release()

    if not ctx.rank0:  # metrics.jsonl is written by rank 0; it judges for everyone
        return verdict("sft_train", True, {}, "judged on rank 0")
    losses, valid = _metrics(full_dir, "train"), _metrics(full_dir, "valid")
    again = _metrics(resumed_dir, "train")
    second = list(range(half + 1, n + 1))
    diffs = [abs(losses[i] - again[i]) for i in second if i in losses and i in again]
    figures = {
        "status": status,
        "losses": losses,
        "resumed_losses": again,
        "valid_losses": valid,
        "resumed_steps": sorted(again),
        "max_resume_diff": max(diffs) if diffs else None,
        "bitwise_equal": all(losses.get(i) == again.get(i) for i in second),
        "packing": cfg.data["packing"],
        "optimizer": adam,
        "fused_adam": fused,
    }
    ok = (
        status == ["done", n, "done", n]
        and sorted(again) == second
        and len(diffs) == len(second)
        and max(diffs) <= RESUME_TOLERANCE
        and len(valid) == n // sizes.eval_interval
        and all(math.isfinite(v) for v in [*losses.values(), *valid.values()])
    )
    first, last = losses.get(1, math.nan), losses.get(n, math.nan)
    return verdict(
        "sft_train",
        ok,
        figures,
        f"{n} steps, loss {first:.3f} -> {last:.3f}, {len(valid)} validations; resume from "
        f"{half} reproduces {half + 1}-{n}: max |d| {figures['max_resume_diff'] or 0:.1e} "
        f"(bitwise {figures['bitwise_equal']}); optimizer {adam} "
        f"({'fused' if fused else 'NOT fused: torch fallback, slower'})",
    )
