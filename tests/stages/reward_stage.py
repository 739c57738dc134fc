"""The rm stage on the shared loop at TP=2 (gloo, fp32) on the bundled reward sample; see
tests/stages/test_rm.py.

Runs the paper's schedule (2 epochs of the 60 sample prompts, batch 8, LR 5e-6 cosine to 10%,
warm-up max(5, 3%)) with validation every 5 iterations, writes the test report, and reloads
the saved checkpoint into a fresh RM. Rank 0 writes the measured values to --out.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_chimed import config
from megatron_chimed.checkpoint.layout import read_latest, read_metadata
from megatron_chimed.checkpoint.weights import load_model_weights
from megatron_chimed.model import unwrap
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.reward.batch import stack_batch
from megatron_chimed.reward.model import HEAD_SEED, VALUE_HEAD, build_reward_model
from megatron_chimed.stages.rm import RewardStage
from megatron_chimed.tokenizer import ZiyaTokenizer
from megatron_chimed.training.loop import train


@torch.no_grad()
def test_scores(model, stage: RewardStage) -> list[float]:
    test = stage.splits["test"]
    batch = stack_batch(torch.utils.data.default_collate([test[i] for i in range(len(test))]))
    return model(batch.tokens, batch.position_ids, None, batch.last_index).tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--tokenizer", required=True)
    args = ap.parse_args()
    run_dir = Path(args.tmp) / "run"
    layout = initialize(tensor_parallel=2, seed=1234)
    cfg = config.load([
        "stage=rm", "parallel=tp2_cpu", "training=tiny", "data=reward_sample", "precision=fp32",
        f"run_dir={run_dir}", "training.seq_length=256", "training.global_batch_size=8",
        "training.micro_batch_size=2", "training.log_interval=5", "training.eval_interval=5",
        "training.tensorboard=false",
    ])  # fmt: skip
    configured = (cfg.training.train_iters, cfg.optim.warmup_iters, cfg.training.eval_iters)
    stage = RewardStage(cfg, ZiyaTokenizer(args.tokenizer))
    schedule, optim = stage.schedule()
    results = {
        "train_iters": schedule.train_iters,
        "warmup_iters": optim.warmup_iters,
        "eval_iters": schedule.eval_iters,
        "lr": optim.lr,
    }
    state = train(cfg, stage, args.tokenizer)
    # The stage derives its schedule; the run's config is left as configured.
    results["config_untouched"] = configured == (
        cfg.training.train_iters,
        cfg.optim.warmup_iters,
        cfg.training.eval_iters,
    )
    results["iterations_run"] = state.iteration
    head = getattr(unwrap(state.model), VALUE_HEAD).weight.detach()
    fresh = torch.nn.init.normal_(
        torch.empty_like(head), std=0.02, generator=torch.Generator().manual_seed(HEAD_SEED)
    )
    heads = [torch.empty_like(head) for _ in range(layout.world_size)]
    dist.all_gather(heads, head)
    results["head_moved"] = (head - fresh).abs().max().item()
    results["head_same_on_tp_ranks"] = all(torch.equal(h, heads[0]) for h in heads)

    latest = read_latest(run_dir / "checkpoints")
    results["checkpoint"] = {"name": latest.name, "stage": read_metadata(latest)["stage"]}
    reloaded = build_reward_model(cfg.model, cfg.parallel, "fp32")
    load_model_weights(reloaded, latest)
    results["scores_trained"] = test_scores(state.model, stage)
    results["scores_reloaded"] = test_scores(reloaded, stage)
    destroy()
    if layout.rank == 0:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        results["metrics"] = [json.loads(line) for line in lines]
        # Written by RewardStage.after_training at the end of train().
        results["test_report"] = json.loads((run_dir / "rm_test_report.json").read_text())
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
