#!/usr/bin/env python3
"""Generation throughput: KV cache vs full recompute on the tiny model at TP=1 and TP=2, and
`transformers.generate` (KV cache) on an HF LLaMA of the same shape.

256 new tokens for a batch of 8 prompts, greedy, no stop tokens (every row runs to the end).
The megatron runs happen in one torchrun launch of 2 gloo processes (TP=1 is DP=2: each rank
decodes the batch on its own core); the HF run uses one thread in this process. The last line
is `RESULT kv_speedup=<the smaller of the TP=1 and TP=2 speed-ups> goal=5`.

python bench/generation.py
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

from megatron_chimed.testing.tiny_ziya import TINY  # noqa: E402

# Prompts of 128 tokens, near the median SFT prompt of CMD (~150): the RS stage's workload.
NEW_TOKENS, BATCH, PROMPT_LEN = 256, 8, 128
# The tiny model's 256 positions are too few for prompt + answer; RoPE has no learned limit.
MODEL = dataclasses.replace(TINY, max_position_embeddings=PROMPT_LEN + NEW_TOKENS)


def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(3, MODEL.vocab_size - 2, (BATCH, PROMPT_LEN), generator=gen).tolist()


def megatron_tokens_per_second(tp: int) -> dict[str, float]:
    from megatron_chimed.generation import GenerationConfig, generate_ids
    from megatron_chimed.model import ParallelConfig, build_model

    model = build_model(MODEL, ParallelConfig(tensor_model_parallel_size=tp), "fp32")
    rates = {}
    for name, kv in (("kv_cache", True), ("recompute", False)):
        cfg = GenerationConfig(max_new_tokens=NEW_TOKENS, batch_size=BATCH, use_kv_cache=kv)
        generate_ids(model, prompts(), GenerationConfig(max_new_tokens=4), MODEL.vocab_size, [])
        start = time.perf_counter()
        out = generate_ids(model, prompts(), cfg, MODEL.vocab_size, stop_ids=[])
        seconds = time.perf_counter() - start
        assert all(len(row) == NEW_TOKENS for row in out)
        rates[name] = BATCH * NEW_TOKENS / seconds
    return rates


def worker(out: str) -> None:
    from megatron.core import parallel_state

    from megatron_chimed.platform import destroy, initialize

    layout = initialize(tensor_parallel=1)
    results = {"tp1": megatron_tokens_per_second(1)}
    parallel_state.destroy_model_parallel()
    initialize(tensor_parallel=2)
    results["tp2"] = megatron_tokens_per_second(2)
    destroy()
    if layout.rank == 0:
        Path(out).write_text(json.dumps(results))


def hf_tokens_per_second() -> float:
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_chimed.testing.tiny_ziya import hf_config

    torch.set_num_threads(1)
    model = LlamaForCausalLM(LlamaConfig(**hf_config(MODEL, "float32"))).eval()
    ids = torch.tensor(prompts())
    options = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **options)
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **options)
    seconds = time.perf_counter() - start
    assert out.shape == (BATCH, PROMPT_LEN + NEW_TOKENS)
    return BATCH * NEW_TOKENS / seconds


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from megatron_chimed.testing.workers import torchrun

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        torchrun(Path(__file__), 2, "--worker", str(out))
        results = json.loads(out.read_text())
    hf = hf_tokens_per_second()
    print(f"tokens/s, batch {BATCH}, {NEW_TOKENS} new tokens, tiny model (CPU, 1 thread/rank):")
    for tp in ("tp1", "tp2"):
        r = results[tp]
        speedup = r["kv_cache"] / r["recompute"]
        print(
            f"  megatron {tp}: kv_cache {r['kv_cache']:8.1f}  recompute {r['recompute']:8.1f}"
            f"  speed-up {speedup:5.2f}x"
        )
    print(f"  transformers.generate (KV cache): {hf:8.1f}")
    speedup = min(r["kv_cache"] / r["recompute"] for r in results.values())
    print(f"RESULT kv_speedup={speedup:.2f} goal=5")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
