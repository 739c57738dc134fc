"""Exact resume with data parallelism: TP=2 x DP=2 (4 processes), then a DP change.

--phase dp2 (4 ranks): an uninterrupted fp32 run of N iterations; a run that exits at N/2
(its checkpoint, dp_reshardable by default, is copied aside) and resumes to N; the same with a
checkpoint as the code before `checkpoint.optimizer_format` wrote it (fully_reshardable, no
format nor DP size in chimed.json). --phase dp1 (2 ranks, so DP=1): both copied N/2
checkpoints resume to N at the other data-parallel size, the dp_reshardable one saving
fully_reshardable. Rank 0 writes losses, consumed samples, AdamW step counts, log lines and
parameter checks to --out; tests/training/test_loop_dp.py asserts on them.
"""

import argparse
import json
import logging
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_chimed import config
from megatron_chimed.checkpoint import layout
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.stages.cpt import PretrainStage
from megatron_chimed.tokenizer import ZiyaTokenizer
from megatron_chimed.training.loop import train

N = 20
# chimed.json keys the code before the optimizer_format option did not write.
NEW_KEYS = ("optimizer_format", "tensor_parallel", "data_parallel")


class Lines(logging.Handler):
    """Keeps the training logger's messages (resume says what a DP change does)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run(args, run_dir: Path, *extra: str):
    cfg = config.load([
        "stage=cpt", "parallel=tp2_cpu", "training=tiny", "precision=fp32", f"run_dir={run_dir}",
        f"training.train_iters={N}", "training.log_interval=1", "training.eval_interval=0",
        "training.tensorboard=false", "optim.lr=2e-3", "optim.warmup_iters=2",
        f"data.blend=[1.0,{args.data}]", *extra,
    ])  # fmt: skip
    return train(cfg, PretrainStage(cfg, ZiyaTokenizer(args.tokenizer)), args.tokenizer)


def losses(run_dir: Path) -> dict[int, float]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["iteration"]: r["lm_loss"] for r in records if r["split"] == "train"}


def flat_params(state) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in state.model.parameters()])


def all_equal(a, b) -> bool:
    same = torch.tensor([float(torch.equal(flat_params(a), flat_params(b)))])
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())


def adam_steps(state) -> list[float]:
    """The step counts of the AdamW states (torch's, on CPU): one value when all agree."""
    parts = getattr(state.optimizer, "chained_optimizers", [state.optimizer])
    return sorted({float(s["step"]) for part in parts for s in part.optimizer.state.values()})


def saved_as(ckpt_root: Path) -> dict:
    meta = layout.read_metadata(layout.read_latest(ckpt_root))
    return {key: meta.get(key) for key in NEW_KEYS}


def make_old_format(src: Path, dst: Path) -> None:
    """Copy a fully_reshardable checkpoint root, its chimed.json as the old code wrote it."""
    shutil.copytree(src, dst)
    for listing in dst.glob("iter_*/manifest.json"):  # nor did it write checksums
        listing.unlink()
    for meta_file in dst.glob(f"iter_*/{layout.METADATA}"):
        meta = json.loads(meta_file.read_text())
        layout.write_metadata(
            meta_file.parent, {k: v for k, v in meta.items() if k not in NEW_KEYS}
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("out", "tmp", "data", "tokenizer", "phase"):
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    tmp = Path(args.tmp)
    lines = Lines()
    logging.getLogger("megatron_chimed.train").addHandler(lines)
    logging.getLogger("megatron_chimed.train").setLevel(logging.INFO)
    parallel = initialize(2, 1234)
    r: dict = {"data_parallel": parallel.data_parallel}
    rank0 = dist.get_rank() == 0
    if args.phase == "dp2":
        full = run(args, tmp / "full")
        run(args, tmp / "half", f"training.exit_after={N // 2}")
        old = "checkpoint.optimizer_format=fully_reshardable"
        run(args, tmp / "old_written", old, f"training.exit_after={N // 2}")
        if rank0:
            shutil.copytree(tmp / "half" / "checkpoints", tmp / "dp_change" / "checkpoints")
            for name in ("old", "old_dp_change"):
                make_old_format(tmp / "old_written" / "checkpoints", tmp / name / "checkpoints")
        dist.barrier()
        r["saved_as"] = {
            "half": saved_as(tmp / "half" / "checkpoints"),
            "old": saved_as(tmp / "old" / "checkpoints"),
        }
        resumed = run(args, tmp / "half")
        resumed_old = run(args, tmp / "old")  # the default (dp_reshardable) from here on
        r.update(
            params_equal=all_equal(full, resumed),
            old_params_equal=all_equal(full, resumed_old),
            consumed=resumed.consumed_samples,
            adam_steps={"full": adam_steps(full), "half": adam_steps(resumed),
                        "old": adam_steps(resumed_old)},
            full=losses(tmp / "full"),
            half=losses(tmp / "half"),
            old=losses(tmp / "old"),
            old_saves_as=saved_as(tmp / "old" / "checkpoints"),
        )  # fmt: skip
    else:
        # Saving in the other format converts: its last checkpoint is fully_reshardable.
        convert = "checkpoint.optimizer_format=fully_reshardable"
        resumed = run(args, tmp / "dp_change", convert)
        log = [line for line in lines.lines if line.startswith("resuming")]
        reloaded = run(args, tmp / "dp_change")  # at N already: loads the converted one only
        resumed_old = run(args, tmp / "old_dp_change")
        r.update(
            consumed=resumed.consumed_samples,
            resumed=losses(tmp / "dp_change"),
            resumed_old=losses(tmp / "old_dp_change"),
            adam_steps={"dp_change": adam_steps(resumed), "old": adam_steps(resumed_old)},
            log=log,
            converted_as=saved_as(tmp / "dp_change" / "checkpoints"),
            converted_reloads=all_equal(resumed, reloaded),
        )
    if rank0:
        Path(args.out).write_text(json.dumps(r, indent=2))
    destroy()


if __name__ == "__main__":  # dist_checkpointing's spawned helper re-imports __main__
    main()
