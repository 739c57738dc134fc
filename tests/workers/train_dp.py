"""Exact resume with data parallelism: TP=2 x DP=2 (4 processes), then a DP change.

--phase dp2 (4 ranks): an uninterrupted fp32 run of N iterations; a run that exits at N/2
(its checkpoint is copied aside) and resumes to N. --phase dp1 (2 ranks, so DP=1): the copied
N/2 checkpoint resumes to N at the other data-parallel size. Rank 0 writes losses, consumed
samples and parameter checks to --out; tests/test_train_dp.py asserts on them.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_chimed import config
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.tokenizer import ZiyaTokenizer
from megatron_chimed.training.cpt import PretrainStage
from megatron_chimed.training.loop import train

N = 20


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


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("out", "tmp", "data", "tokenizer", "phase"):
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    tmp = Path(args.tmp)
    layout = initialize(2, 1234)
    r: dict = {"data_parallel": layout.data_parallel}
    if args.phase == "dp2":
        full = run(args, tmp / "full")
        run(args, tmp / "half", f"training.exit_after={N // 2}")
        if dist.get_rank() == 0:
            shutil.copytree(tmp / "half" / "checkpoints", tmp / "dp_change" / "checkpoints")
        dist.barrier()
        resumed = run(args, tmp / "half")
        same = torch.tensor([float(torch.equal(flat_params(full), flat_params(resumed)))])
        dist.all_reduce(same, op=dist.ReduceOp.MIN)
        r.update(params_equal=bool(same.item()), consumed=resumed.consumed_samples,
                 full=losses(tmp / "full"), half=losses(tmp / "half"))  # fmt: skip
    else:
        resumed = run(args, tmp / "dp_change")
        r.update(consumed=resumed.consumed_samples, resumed=losses(tmp / "dp_change"))
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(r, indent=2))
    destroy()


if __name__ == "__main__":  # dist_checkpointing's spawned helper re-imports __main__
    main()
