"""Reward-model checks at TP=1 and TP=2 in one 2-process launch (tests/reward/test_reward_model.py).

Phase 1, TP=1: save a GPT checkpoint as the "SFT" one, start an RM from it, score a batch
(right/left padded, each prompt alone), loss gradients; save the RM with dist_checkpointing.
Phase 2, TP=2: load the RM through megatron's resharding and repeat; train on synthetic
preferences (tagged answers: GOOD > untagged > BAD) and measure validation accuracy; bf16;
save the trained RM as training does and score a JSONL with tools/score.py's main.
Rank 0 writes every measured value to --out; the test asserts on them.
"""

import argparse
import dataclasses
import json
import os
import shutil
import time

import torch
import torch.distributed as dist

from megatron_chimed.checkpoint.weights import save_model_weights
from megatron_chimed.data.template import get_template
from megatron_chimed.model import ParallelConfig, build_model, unwrap
from megatron_chimed.platform import initialize
from megatron_chimed.reward.batch import collate, encode_records
from megatron_chimed.reward.data import RankedRecord, RewardDataConfig, read_ranked_jsonl
from megatron_chimed.reward.loss import PAIR_ACCURACY, RANKING_ACCURACY, pairwise_loss
from megatron_chimed.reward.model import VALUE_HEAD, build_reward_model, init_from_sft
from megatron_chimed.reward.score import main as score_main
from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA, TINY
from megatron_chimed.tokenizer import ZiyaTokenizer

SEQ = 256
PAPER_ORDER = ["response_chosen", "response_gpt4", "response_gpt35", "response_rejected"]
METRICS = (PAIR_ACCURACY, RANKING_ACCURACY)
GOOD, BAD = "【推荐】", "【一般】"


def examples(tokenizer, records, pairing="adjacent"):
    return encode_records(records, get_template("ziya"), tokenizer, SEQ, pairing)


def scores_and_grads(model, batch) -> dict:
    model.zero_grad()
    scores = model(batch.tokens, batch.position_ids, None, batch.last_index)
    loss_sum, count, _ = pairwise_loss(scores, batch.pairs, batch.group_sizes)
    (loss_sum / count).backward()
    gpt = unwrap(model)
    return {
        "scores": scores.tolist(),
        "loss": (loss_sum / count).item(),
        "head_grad": getattr(gpt, VALUE_HEAD).weight.grad.flatten().tolist(),
        "final_norm_grad": gpt.decoder.final_layernorm.weight.grad.flatten().tolist(),
        "trunk_params_without_grad": [
            n for n, p in gpt.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
        ],
    }


@torch.no_grad()
def scores_of(model, exs) -> list[float]:
    batch = collate(exs, SEQ, 0)
    return model(batch.tokens, batch.position_ids, None, batch.last_index).tolist()


@torch.no_grad()
def left_padded_scores(model, exs) -> list[float]:
    """The same batch padded on the left: pad keys masked, positions from the first token."""
    batch = collate(exs, SEQ, 0)
    n, width = batch.tokens.shape
    lengths = batch.last_index + 1
    pad = (width - lengths).unsqueeze(1)
    columns = torch.arange(width).unsqueeze(0)
    source = (columns - pad).clamp(min=0)
    tokens = torch.where(columns < pad, 0, batch.tokens.gather(1, source))
    causal = columns.T < columns  # query i may not see key j > i
    mask = (causal.unsqueeze(0) | (columns < pad).unsqueeze(1)).unsqueeze(1)  # True = masked
    return model(tokens, source, mask, torch.full((n,), width - 1)).tolist()


def score_checks(model, exs) -> dict:
    out = scores_and_grads(model, collate(exs, SEQ, 0))
    out["scores_left_padded"] = left_padded_scores(model, exs)
    out["scores_one_prompt_at_a_time"] = [s for ex in exs for s in scores_of(model, [ex])]
    out["scores_reversed_batch"] = scores_of(model, exs[::-1])
    return out


def save_sft_checkpoint(root: str) -> dict:
    """A plain GPTModel saved as SFT and the converter do."""
    gpt = build_model(TINY, ParallelConfig(tensor_model_parallel_size=1), "fp32")
    save_model_weights(gpt, root, 0, {"kind": "converted"})
    return {n: p.detach().clone() for n, p in gpt.named_parameters()}


def score_tool(
    model, tokenizer_dir: str, root: str, records: list[RankedRecord], rank: int
) -> dict:
    """Save the RM as training does, then run tools/score.py's main on a JSONL of it."""
    save_model_weights(model, root, 7, {"kind": "train", "model": dataclasses.asdict(TINY)})
    if dist.get_rank() == 0:
        shutil.copytree(tokenizer_dir, os.path.join(root, "tokenizer"))
        rows = [
            {"prompt": r.prompt, "response": x, "id": i}
            for i, r in enumerate(records)
            for x in r.responses
        ]
        with open(os.path.join(root, "in.jsonl"), "w") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    dist.barrier()
    out = os.path.join(root, "scored.jsonl")
    score_main(
        [
            "--checkpoint",
            root,
            "--input",
            os.path.join(root, "in.jsonl"),
            "--output",
            out,
            "--precision",
            "fp32",
            "--seq-length",
            str(SEQ),
            "--batch-size",
            "3",
        ]
    )
    if rank != 0:  # score.main ends with destroy(): no process group from here on
        return {}
    return {"rows": [json.loads(line) for line in open(out, encoding="utf-8")]}


def synthetic(records: list[RankedRecord]) -> list[RankedRecord]:
    """A learnable rule: GOOD + answer > answer > BAD + answer, each on a different answer of
    the prompt, so that an untrained model is near chance (the answers differ more than the
    tags)."""
    out = []
    for r in records:
        k = len(r.responses)
        for i in range(k):
            ranked = (
                GOOD + r.responses[i],
                r.responses[(i + 1) % k],
                BAD + r.responses[(i + 2) % k],
            )
            out.append(RankedRecord(r.prompt, ranked))
    return out


def accuracy(model, exs) -> dict:
    with torch.no_grad():
        batch = collate(exs, SEQ, 0)
        scores = model(batch.tokens, batch.position_ids, None, batch.last_index)
        report = pairwise_loss(scores, batch.pairs, batch.group_sizes)[2]
    return {name: (report[name][0] / report[name][1]).item() for name in METRICS}


def train_synthetic(model, tokenizer, steps: int, batch_prompts: int = 8) -> dict:
    cfg = RewardDataConfig(rank_order=PAPER_ORDER)
    train = examples(
        tokenizer, synthetic(read_ranked_jsonl(SAMPLE_DATA / "reward/train.jsonl", cfg)[0])
    )
    valid = examples(
        tokenizer, synthetic(read_ranked_jsonl(SAMPLE_DATA / "reward/valid.jsonl", cfg)[0])
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    before, start, losses = accuracy(model, valid), time.time(), []
    for step in range(steps):
        picked = [
            train[order[(step * batch_prompts + i) % len(train)]] for i in range(batch_prompts)
        ]
        batch = collate(picked, SEQ, 0)
        optimizer.zero_grad()
        scores = model(batch.tokens, batch.position_ids, None, batch.last_index)
        loss_sum, count, _ = pairwise_loss(scores, batch.pairs, batch.group_sizes)
        (loss_sum / count).backward()
        optimizer.step()
        losses.append((loss_sum / count).item())
    return {
        "steps": steps,
        "train_prompts": len(train),
        "valid_prompts": len(valid),
        "valid_before": before,
        "valid_after": accuracy(model, valid),
        "first_loss": losses[0],
        "last_loss": sum(losses[-5:]) / 5,
        "seconds": time.time() - start,
    }


def main() -> None:
    from megatron.core import dist_checkpointing, parallel_state

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--train-steps", type=int, default=60)
    args = ap.parse_args()
    tokenizer = ZiyaTokenizer(args.tokenizer)
    cfg = RewardDataConfig(rank_order=PAPER_ORDER)
    records = read_ranked_jsonl(SAMPLE_DATA / "reward/valid.jsonl", cfg)[0][:4]
    exs = examples(tokenizer, records)
    results: dict = {"batch": {"sequences": sum(len(e.sequences) for e in exs)}}

    layout = initialize(tensor_parallel=1, seed=1234)
    sft_params = save_sft_checkpoint(os.path.join(args.ckpt, "sft"))
    model = build_reward_model(TINY, ParallelConfig(tensor_model_parallel_size=1), "fp32")
    fresh_head = getattr(unwrap(model), VALUE_HEAD).weight.detach().clone()
    init_from_sft(model, os.path.join(args.ckpt, "sft"))
    gpt = unwrap(model)
    results["init"] = {
        "trunk_max_diff": max(
            (p - sft_params[n]).abs().max().item()
            for n, p in gpt.named_parameters()
            if n in sft_params
        ),
        "trunk_params_loaded": sum(n in sft_params for n, _ in gpt.named_parameters()),
        "sft_params": len(sft_params),
        "head_kept_fresh": bool(torch.equal(getattr(gpt, VALUE_HEAD).weight, fresh_head)),
        "keys": sorted(model.sharded_state_dict()),
    }
    results["tp1"] = score_checks(model, exs)
    rm_dir = os.path.join(args.ckpt, "rm")
    os.makedirs(rm_dir, exist_ok=True)
    dist_checkpointing.save({"model": model.sharded_state_dict()}, rm_dir)
    parallel_state.destroy_model_parallel()

    layout = initialize(tensor_parallel=2, seed=99)  # another seed: weights must come from disk
    model = build_reward_model(TINY, ParallelConfig(tensor_model_parallel_size=2), "fp32")
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, rm_dir)["model"]
    model.load_state_dict(loaded)
    results["tp2"] = score_checks(model, exs)
    head = getattr(unwrap(model), VALUE_HEAD).weight.detach()
    heads = [torch.empty_like(head) for _ in range(layout.world_size)]
    dist.all_gather(heads, head)
    results["tp2"]["head_same_on_tp_ranks"] = all(torch.equal(h, heads[0]) for h in heads)
    results["train"] = train_synthetic(model, tokenizer, args.train_steps)

    bf16 = build_reward_model(TINY, ParallelConfig(tensor_model_parallel_size=2), "bf16")
    bf16.load_state_dict(
        dist_checkpointing.load({"model": bf16.sharded_state_dict()}, rm_dir)["model"]
    )
    batch = collate(exs, SEQ, 0)
    with torch.no_grad():
        scores = bf16(batch.tokens, batch.position_ids, None, batch.last_index)
    results["bf16"] = {"scores": scores.tolist(), "dtype": str(scores.dtype)}
    results["score_tool"] = {
        "expected": scores_of(model, exs),
        **score_tool(
            model, args.tokenizer, os.path.join(args.ckpt, "trained"), records, layout.rank
        ),
    }

    if layout.rank == 0:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
