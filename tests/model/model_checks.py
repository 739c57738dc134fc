"""Checks on the tiny GPTModel at TP=1 and TP=2 in one 2-process launch (see test_model.py).

Phase 1: TP=1 (so DP=2): build, loss, grads; save with dist_checkpointing.
Phase 2: TP=2: load the same weights through megatron's resharding, loss, grads, bf16.
Rank 0 writes every measured value to --out; the test asserts on them.
"""

import argparse
import json
import math
import os

import torch

from megatron_chimed.model import ModelConfig, ParallelConfig, build_model, unwrap
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.testing.tiny_ziya import TINY


def batch(model_cfg: ModelConfig, seq: int = 32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, model_cfg.vocab_size, (2, seq + 1), generator=gen)
    position_ids = torch.arange(seq).unsqueeze(0).expand(2, seq)
    return tokens[:, :-1].contiguous(), position_ids, tokens[:, 1:].contiguous()


def loss_and_grads(model: torch.nn.Module, model_cfg: ModelConfig) -> dict:
    tokens, position_ids, labels = batch(model_cfg)
    logits = model(tokens, position_ids, None)
    per_token = model(tokens, position_ids, None, labels=labels)
    loss = per_token.float().mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return {
        "loss": loss.item(),
        "logits_shape": list(logits.shape),
        "logits_finite": bool(torch.isfinite(logits).all()),
        "params": len(grads),
        "params_without_grad": [n for n, g in grads.items() if g is None],
        "nonfinite_grads": [
            n for n, g in grads.items() if g is not None and not torch.isfinite(g).all()
        ],
        "zero_grads": [n for n, g in grads.items() if g is not None and not g.abs().sum() > 0],
    }


def main() -> None:
    from megatron.core import dist_checkpointing, parallel_state

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", required=True)
    args = ap.parse_args()
    results: dict = {}

    layout = initialize(tensor_parallel=1, seed=1234)
    model = build_model(TINY, ParallelConfig(tensor_model_parallel_size=1), "fp32")
    results["tp1"] = loss_and_grads(model, TINY)
    results["tp1"]["data_parallel"] = layout.data_parallel
    os.makedirs(args.ckpt, exist_ok=True)
    dist_checkpointing.save(model.sharded_state_dict(), args.ckpt)
    parallel_state.destroy_model_parallel()  # keep the process group; rebuild megatron's groups

    layout = initialize(tensor_parallel=2, seed=99)  # another seed: weights must come from disk
    model = build_model(TINY, ParallelConfig(tensor_model_parallel_size=2), "fp32")
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), args.ckpt))
    results["tp2"] = loss_and_grads(model, TINY)
    results["tp2"]["data_parallel"] = layout.data_parallel
    results["tp2"]["local_vocab_rows"] = unwrap(model).embedding.word_embeddings.weight.shape[0]

    bf16 = build_model(TINY, ParallelConfig(tensor_model_parallel_size=2), "bf16")
    results["bf16"] = loss_and_grads(bf16, TINY)
    results["bf16"]["dtypes"] = sorted({str(p.dtype) for p in bf16.parameters()})
    destroy()

    if layout.rank == 0:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2, default=lambda x: None if math.isnan(x) else x)


if __name__ == "__main__":
    main()
