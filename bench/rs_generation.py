#!/usr/bin/env python3
"""RS generation: the dynamic engine (continuous batching, paged KV) against the static
batch-8 engine, side by side on the tiny model.

The RS generate phase's workload at small scale: 64 prompts x N=4 answers, sampled as RS
samples (temperature 1, top-p 0.9). Each answer's length is drawn (seeded) in [16, 256] and
the answer ends there, as if the model had produced `</s>` at that length (per-answer length
limits; a sampled stop id ends it earlier, the same on both sides). The static engine decodes
batches of 8 until the longest answer of the batch ends; the dynamic one admits the next
waiting answer whenever one ends. Both must return the same tokens (asserted).

Reported per engine: answer tokens/s (median of interleaved runs: D, S, D) and host
ops per decode step (torch.profiler's event count over a decode-only window, divided by the
steps in it). TP=1 in one process (about 3 minutes here, most of it the static engine); --tp2
adds a 2-process gloo launch at TP=2 (about 5 more minutes). The last line is
`RESULT rs_generation_speedup=<TP=1 tokens/s ratio> goal=5`.

python bench/rs_generation.py [--tp2]
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

from megatron_chimed.testing.tiny_ziya import TINY  # noqa: E402

PROMPTS, SAMPLES, SHORTEST, LONGEST, PROMPT_TOKENS = 64, 4, 16, 256, (16, 64)
MODEL = dataclasses.replace(TINY, max_position_embeddings=512)
STOPS = [2, 1998]  # </s>, <human> of the tiny tokenizer


def workload() -> tuple[list[list[int]], list[int]]:
    """N rows per prompt (RS's layout) and each answer's drawn length."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(*PROMPT_TOKENS, (PROMPTS,), generator=gen).tolist()
    prompts = [[1, *torch.randint(3, 1990, (n - 1,), generator=gen).tolist()] for n in lengths]
    rows = [p for p in prompts for _ in range(SAMPLES)]
    limits = torch.randint(SHORTEST, LONGEST + 1, (len(rows),), generator=gen).tolist()
    return rows, limits


def configs():
    from megatron_chimed.generation import GenerationConfig

    rs = GenerationConfig(temperature=1.0, top_p=0.9, max_new_tokens=LONGEST, seed=1234)
    return {"dynamic": rs, "static": dataclasses.replace(rs, engine="static", batch_size=8)}


def host_ops_per_step(model: torch.nn.Module, cfg) -> float:
    """Profiler events per decode step: 8 answers of 48 tokens minus 8 answers of 16 (the
    difference is 32 decode steps; prefill and set-up cancel out)."""
    from torch.profiler import ProfilerActivity, profile

    from megatron_chimed.generation import generate_ids

    rows = [[1, 5, 6, 7, 8, 9, 10, 11 + i] for i in range(8)]
    counts = []
    for new in (16, 48):
        run = dataclasses.replace(cfg, max_new_tokens=new, temperature=1.0)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate_ids(model, rows, run, MODEL.vocab_size, [])
        counts.append(len(prof.events()))
    return (counts[1] - counts[0]) / 32


def measure(tp: int, rounds: int) -> dict:
    from megatron_chimed.generation import generate_ids
    from megatron_chimed.model import ParallelConfig, build_model

    model = build_model(MODEL, ParallelConfig(tensor_model_parallel_size=tp), "fp32")
    rows, limits = workload()
    cfgs = configs()
    answers, seconds = {}, {name: [] for name in cfgs}
    for cfg in cfgs.values():  # warm-up (the dynamic engine is built here)
        generate_ids(model, rows[:8], cfg, MODEL.vocab_size, STOPS, limits=[SHORTEST] * 8)
    # Each static run sits between two dynamic ones (D S D S D...): a drift in the machine's
    # speed shows in both engines' figures, and the dynamic runs cost little.
    for name in ["dynamic", "static"] * rounds + ["dynamic"]:
        start = time.perf_counter()
        cfg = cfgs[name]
        answers[name] = generate_ids(model, rows, cfg, MODEL.vocab_size, STOPS, limits=limits)
        seconds[name].append(time.perf_counter() - start)
    assert answers["dynamic"] == answers["static"], "the engines gave different answers"
    tokens = sum(map(len, answers["dynamic"]))
    result = {"answer_tokens": tokens, "rows": len(rows)}
    for name, cfg in cfgs.items():
        result[name] = {
            "tokens_per_s": tokens / statistics.median(seconds[name]),
            "seconds": seconds[name],
            "host_ops_per_step": host_ops_per_step(model, cfg),
        }
    from megatron_chimed.generation.dynamic import dynamic_generator

    result["dynamic"]["max_requests"] = dynamic_generator(
        model, cfgs["dynamic"], MODEL.vocab_size, LONGEST + PROMPT_TOKENS[1]
    ).max_requests
    return result


def worker(tp: int, rounds: int, out: str) -> None:
    from megatron_chimed.platform import destroy, initialize

    layout = initialize(tensor_parallel=tp)
    result = measure(tp, rounds)
    destroy()
    if layout.rank == 0:
        Path(out).write_text(json.dumps(result))


def report(tp: int, r: dict) -> float:
    dyn, static = r["dynamic"], r["static"]
    ratio = dyn["tokens_per_s"] / static["tokens_per_s"]
    print(f"TP={tp}: {r['rows']} answers, {r['answer_tokens']} answer tokens")
    print(
        f"  static batch 8:   {static['tokens_per_s']:8.1f} tok/s  "
        f"{static['host_ops_per_step']:7.0f} host ops/decode step  runs {static['seconds']}"
    )
    print(
        f"  dynamic engine:   {dyn['tokens_per_s']:8.1f} tok/s  "
        f"{dyn['host_ops_per_step']:7.0f} host ops/decode step  runs {dyn['seconds']}  "
        f"(up to {dyn['max_requests']} answers in flight)"
    )
    print(f"  speed-up {ratio:.2f}x")
    return ratio


def main() -> None:
    from megatron_chimed.testing.workers import torchrun

    print("RS generation, tiny model on CPU (gloo, 1 thread per rank); same answers asserted")
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tp, rounds in ((1, 1), (2, 1)):
            if tp == 2 and "--tp2" not in sys.argv:
                break
            out = Path(tmp) / f"tp{tp}.json"
            torchrun(Path(__file__), tp, "--worker", str(tp), str(rounds), str(out), timeout=900)
            ratios[tp] = report(tp, json.loads(out.read_text()))
    print(f"RESULT rs_generation_speedup={ratios[1]:.2f} goal=5")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        main()
