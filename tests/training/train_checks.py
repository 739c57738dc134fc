"""The training loop at TP=2 (bf16, distributed optimizer) in one 2-process launch.

Runs, in order, each with its own run_dir: an uninterrupted run of N iterations; a run that
exits at N/2 and resumes to N; a run preempted by SIGUSR1 (sent to rank 1 only) and resumed;
a checkpoint save whose writer fails; the loss of a converted HF checkpoint. Rank 0 writes the
measured values to --out; tests/training/test_loop.py asserts on them.
"""

import argparse
import json
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_chimed import config
from megatron_chimed.checkpoint import layout
from megatron_chimed.checkpoint.weights import load_model_weights
from megatron_chimed.model import build_model, unwrap
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.stages.cpt import PretrainStage
from megatron_chimed.tokenizer import ZiyaTokenizer
from megatron_chimed.training import checkpointing
from megatron_chimed.training.loop import train
from megatron_chimed.training.loss import masked_lm_loss

N = 40


class SignalledStage(PretrainStage):
    """Sends SIGUSR1 to rank 1 alone in the middle of a step, as Slurm might."""

    calls = 0

    def forward_step(self, data_iterator, model):
        SignalledStage.calls += 1
        if SignalledStage.calls == 30 and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return super().forward_step(data_iterator, model)


def run_cfg(args, run_dir: Path, *extra: str):
    return config.load(
        [
            "stage=cpt",
            "parallel=tp2_cpu",
            "training=tiny",
            f"run_dir={run_dir}",
            f"training.train_iters={N}",
            "training.log_interval=1",
            "training.eval_interval=0",
            "training.tensorboard=false",
            "optim.lr=2e-3",
            "optim.warmup_iters=2",
            f"data.blend=[1.0,{args.data}]",
            *extra,
        ]
    )


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in unwrap(model).parameters()]


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["iteration"]: r["lm_loss"] for r in map(json.loads, lines) if r["split"] == "train"}


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def all_ranks(value: bool) -> bool:
    flag = torch.tensor([float(value)])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("out", "tmp", "data", "tokenizer", "converted", "tokens"):
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    tmp = Path(args.tmp)
    tok = ZiyaTokenizer(args.tokenizer)
    initialize(2, 1234)
    r: dict = {}

    full_dir = tmp / "full"
    full = train(
        run_cfg(args, full_dir), PretrainStage(run_cfg(args, full_dir), tok), args.tokenizer
    )
    full_params = params(full.model)
    r["full"] = {"status": full.status, "iteration": full.iteration}

    half_dir = tmp / "half"
    cfg = run_cfg(args, half_dir, f"training.exit_after={N // 2}")
    first = train(cfg, PretrainStage(cfg, tok), args.tokenizer)
    cfg = run_cfg(args, half_dir)
    second = train(cfg, PretrainStage(cfg, tok), args.tokenizer)
    r["half"] = {
        "first": [first.status, first.iteration],
        "second": [second.status, second.iteration, second.consumed_samples],
        "params_equal": all_ranks(same(full_params, params(second.model))),
        "checkpoints": sorted(p.name for p in (half_dir / "checkpoints").glob("iter_*")),
        "optimizer_format": layout.read_metadata(
            layout.iteration_dir(half_dir / "checkpoints", N // 2)
        ).get("optimizer_format"),
    }

    pre_dir = tmp / "preempt"
    cfg = run_cfg(args, pre_dir)
    stopped = train(cfg, SignalledStage(cfg, tok), args.tokenizer)
    iters = torch.tensor([float(stopped.iteration)])
    dist.all_reduce(iters, op=dist.ReduceOp.MAX)
    resumed = train(cfg, PretrainStage(cfg, tok), args.tokenizer)
    r["preempt"] = {
        "status": stopped.status,
        "iteration": stopped.iteration,
        "ranks_agree": iters.item() == stopped.iteration,
        "resumed": [resumed.status, resumed.iteration],
        "params_equal": all_ranks(same(full_params, params(resumed.model))),
    }

    # A writer that dies half-way through the next checkpoint.
    from megatron.core import dist_checkpointing

    real_save = dist_checkpointing.save

    def failing_save(state, directory, *a, **k):
        Path(directory, f"partial_{dist.get_rank()}.distcp").write_bytes(b"half a shard")
        raise OSError("disk full (simulated)")

    dist_checkpointing.save = failing_save
    root = full_dir / "checkpoints"
    try:
        checkpointing.save(root, N + 1, full.model, full.optimizer, full.scheduler, {})
        error = None
    except OSError as err:
        error = str(err)
    finally:
        dist_checkpointing.save = real_save
    fresh = build_model(cfg.model, cfg.parallel, "bf16", 64)
    load_model_weights(fresh, root)
    r["failed_save"] = {
        "error": error,
        "latest": layout.read_latest(root).name,
        "loads_previous": all_ranks(same(full_params, params(fresh))),
    }

    # The loss of a converted HF checkpoint, fp32 at TP=2, on the tokens the test gave.
    cfg32 = run_cfg(args, tmp / "hf", "precision=fp32")
    model = build_model(cfg32.model, cfg32.parallel, "fp32", 64)
    load_model_weights(model, args.converted)
    ids = torch.tensor(json.loads(Path(args.tokens).read_text())).unsqueeze(0)
    tokens, labels = ids[:, :-1], ids[:, 1:]
    position_ids = torch.arange(tokens.size(1)).unsqueeze(0)
    with torch.no_grad():
        logits = model(tokens, position_ids, None)
        loss_sum, count, _ = masked_lm_loss(logits, labels, torch.ones_like(labels), 2000)
        padded_vocab_loss = model(tokens, position_ids, None, labels=labels).mean()
    r["hf_loss"] = {"ours": (loss_sum / count).item(), "gptmodel": padded_vocab_loss.item()}

    if dist.get_rank() == 0:
        r["losses"] = {name: losses(tmp / name) for name in ("full", "half", "preempt")}
        Path(args.out).write_text(json.dumps(r, indent=2))
    destroy()


if __name__ == "__main__":  # dist_checkpointing's spawned helper re-imports __main__
    main()
