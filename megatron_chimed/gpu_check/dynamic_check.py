"""The `dynamic_generation` check: megatron-core's dynamic engine (continuous batching, paged
KV cache, CUDA graphs on a GPU) against the static engine, on the converted checkpoint.

What passing means: greedy decoding through the dynamic engine gives the static engine's tokens,
and both run the RS-like workload (answers of different lengths) so that tokens/s of each and
their ratio are printed. On a GPU the model is bf16 (flash-attn's paged kernels take no fp32),
where a near-tie between two logits may round differently in the two attention kernels: the
check then asks every row's first tokens to agree and at least 3 rows in 4 to agree whole (the
bf16 rows identical are reported). On the CPU (`--dry-run`) it runs in fp32 without CUDA graphs,
and every token must agree.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from megatron_chimed.gpu_check.context import CheckContext, release, synchronize
from megatron_chimed.gpu_check.results import CheckResult, verdict

ROWS_IDENTICAL_MIN = 0.75  # bf16 on a GPU; fp32 on the CPU must be 1.0
FIRST_TOKENS = 4  # bf16: each row's first tokens must agree (a late near-tie may flip)


def _workload(prompts: list[list[int]], rows: int, new: int) -> tuple[list[list[int]], list[int]]:
    """`rows` answers over the prompts, each with its own length in [new/4, new] (seeded), as
    RS's answers end at different lengths."""
    gen = torch.Generator().manual_seed(0)
    limits = torch.randint(max(1, new // 4), new + 1, (rows,), generator=gen).tolist()
    return [prompts[i % len(prompts)] for i in range(rows)], limits


def check_dynamic_generation(ctx: CheckContext) -> CheckResult:
    """Greedy tokens of the dynamic engine == the static engine's; tokens/s of both."""
    from megatron_chimed.config.stages import GenerationConfig
    from megatron_chimed.data.template import get_template
    from megatron_chimed.generation import generate_ids
    from megatron_chimed.generation.dynamic import close, dynamic_generator
    from megatron_chimed.generation.loading import load_for_generation
    from megatron_chimed.gpu_check.checks import _prompts
    from megatron_chimed.gpu_check.context import fresh_attention_env

    gpu = ctx.device.type == "cuda"
    precision = "bf16" if gpu else "fp32"
    new = ctx.sizes.gen_new_tokens
    fresh_attention_env()
    model, tokenizer = load_for_generation(ctx.converted, ctx.tp, precision)
    stops = get_template("ziya").stop_token_ids(tokenizer)
    prompts = _prompts(tokenizer, 8)
    dynamic = GenerationConfig(max_new_tokens=new)  # CUDA graphs: on with a GPU
    static = dataclasses.replace(dynamic, engine="static", batch_size=8)

    def run(cfg: GenerationConfig, rows: list[list[int]], limits=None, stop=stops):
        return generate_ids(model, rows, cfg, tokenizer.vocab_size, stop, limits=limits)

    got, want = run(dynamic, prompts), run(static, prompts)
    identical = sum(a == b for a, b in zip(got, want)) / len(prompts)
    first = all(a[:FIRST_TOKENS] == b[:FIRST_TOKENS] for a, b in zip(got, want))
    engine = dynamic_generator(model, dynamic, tokenizer.vocab_size, new + max(map(len, prompts)))
    figures: dict = {
        "precision": precision,
        "cuda_graphs": engine.shape.cuda_graphs,
        "max_requests": engine.max_requests,
        "kv_cache_gib": engine.shape.kv_bytes / 1024**3,
        "rows_identical": identical,
        "first_tokens_identical": first,
        "tokens": sum(map(len, got)),
    }
    rows, limits = _workload(prompts, 8 if ctx.dry_run else 256, new)
    for name, cfg in (("static", static), ("dynamic", dynamic), ("static", static)):
        synchronize()
        start = time.perf_counter()
        out = run(cfg, rows, limits, [])  # no stop ids: each answer runs to its own length
        synchronize()
        rate = sum(map(len, out)) / (time.perf_counter() - start)
        figures[f"{name}_tokens_per_s"] = max(rate, figures.get(f"{name}_tokens_per_s", 0.0))
    figures["speedup"] = figures["dynamic_tokens_per_s"] / figures["static_tokens_per_s"]
    close(model)  # the KV pool and megatron's process-wide record of CUDA graphs
    model = engine = None
    release()
    need = ROWS_IDENTICAL_MIN if gpu else 1.0
    ok = figures["tokens"] > 0 and identical >= need and first
    return verdict(
        "dynamic_generation",
        ok,
        figures,
        f"greedy dynamic == static: {identical:.0%} of rows (>= {need:.0%}; {precision}, first "
        f"{FIRST_TOKENS} tokens of every row {'equal' if first else 'DIFFER'}); CUDA graphs "
        f"{'on' if figures['cuda_graphs'] else 'off'}, up to {figures['max_requests']} answers in "
        f"flight; {len(rows)} answers: static batch 8 {figures['static_tokens_per_s']:.0f} "
        f"tok/s, dynamic {figures['dynamic_tokens_per_s']:.0f} tok/s, "
        f"{figures['speedup']:.2f}x",
    )
