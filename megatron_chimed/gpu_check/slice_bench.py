"""The 13B-shaped slice: Ziya-13B-v2's layer shape (hidden 5120, 40 heads, FFN 13824, vocab
39410) with a few layers at sequence 4096, bf16, megatron DDP and the distributed optimizer,
as training builds them. Measured: fwd+bwd time and activation memory per layer, model
TFLOP/s per GPU, then an A/B of TE's attention backend and of gradient-accumulation fusion.

Per-layer figures are marginal: the baseline runs at L and L/2 layers and the difference is
divided by the layers removed, so the embedding and the 39k-vocabulary output layer (about
two thirds of a layer's work at this shape) do not inflate them. TFLOP/s counts the whole
model with Megatron-LM's formula (causal attention counted in full, as Megatron-LM does).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from collections.abc import Iterator
from statistics import median

import torch

from megatron_chimed.gpu_check.context import (
    CheckContext,
    SliceShape,
    fresh_attention_env,
    release,
    synchronize,
    te_attention_log,
)
from megatron_chimed.gpu_check.results import CheckResult, skipped, verdict
from megatron_chimed.model import ModelConfig

GIB = 2**30
FUSED_WGRAD = "fused_weight_gradient_mlp_cuda"
# What each forced TE backend must log when it runs (TE's "Running with ..." line).
EXPECTED_LOG = {"flash": "FlashAttention", "fused": "FusedAttention"}


def model_flops(shape: SliceShape, layers: int, vocab_padded: int) -> float:
    """FLOPs of one fwd+bwd step over micro_batch x seq tokens (Megatron-LM's count: 3x the
    forward's 2 FLOPs per multiply-add; attention scores and values over the full sequence)."""
    h, f, s = shape.hidden, shape.ffn, shape.seq
    per_layer = 4 * h * h + 3 * h * f  # QKV + output projection (no GQA) + SwiGLU MLP
    tokens = shape.micro_batch * s
    return 6 * tokens * (layers * per_layer + h * vocab_padded) + 12 * tokens * layers * s * h


@contextlib.contextmanager
def gradient_accumulation_fusion(on: bool) -> Iterator[None]:
    """Build with `gradient_accumulation_fusion` set on the TransformerConfig. The project's
    builder keeps it off and has no switch for it; the layers read it when they are built, so
    the A/B sets it on the config `build_model` makes, for this build only."""
    from megatron_chimed.model import builder

    make = builder.transformer_config

    def with_fusion(*args: object, **kwargs: object) -> object:
        config = make(*args, **kwargs)
        config.gradient_accumulation_fusion = True
        return config

    if on:
        builder.transformer_config = with_fusion
    try:
        yield
    finally:
        builder.transformer_config = make


def measure(
    ctx: CheckContext, layers: int, backend: str = "auto", fusion: bool = False
) -> dict[str, object]:
    """Build the slice with `layers` layers, run warm-up + timed steps; its figures."""
    from megatron_chimed.config.schema import OptimConfig
    from megatron_chimed.model import build_model
    from megatron_chimed.training.optim import build_optimizer, wrap_ddp

    shape, sizes = ctx.sizes.slice, ctx.sizes
    impl = ctx.impl()
    model_cfg = ModelConfig(
        name="slice",
        hidden_size=shape.hidden,
        num_layers=layers,
        num_attention_heads=shape.heads,
        num_query_groups=shape.heads,
        ffn_hidden_size=shape.ffn,
        vocab_size=shape.vocab,
        max_position_embeddings=shape.seq,
        transformer_impl=impl,
        attention_backend=backend if impl == "transformer_engine" else "auto",
    )
    parallel = ctx.parallel(impl)
    fresh_attention_env()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with gradient_accumulation_fusion(fusion), te_attention_log() as log:
        model = build_model(model_cfg, parallel, "bf16", shape.seq)
        ddp = wrap_ddp(model, parallel)
        optimizer, _ = build_optimizer(ddp, OptimConfig(), parallel, "bf16", 100)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, shape.vocab, (shape.micro_batch, shape.seq + 1), generator=gen)
        ids = ids.to(ctx.device)
        tokens, labels = ids[:, :-1], ids[:, 1:]
        positions = torch.arange(shape.seq, device=ctx.device).expand_as(tokens)
        fwd_bwd, steps, activations, peaks, loss = [], [], [], [], math.nan
        for i in range(sizes.slice_warmup + sizes.slice_iters):
            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            synchronize()
            before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            out = ddp(tokens, positions, None, labels=labels).float().mean()
            out.backward()
            ddp.finish_grad_sync()
            synchronize()
            middle = time.perf_counter()
            optimizer.step()
            synchronize()
            if i >= sizes.slice_warmup:
                fwd_bwd.append(middle - start)
                steps.append(time.perf_counter() - middle)
                if torch.cuda.is_available():
                    peaks.append(torch.cuda.max_memory_allocated())
                    activations.append(peaks[-1] - before)
            loss = out.item()
        static = torch.cuda.memory_allocated() if torch.cuda.is_available() else None
        vocab_padded = model_cfg.padded_vocab_size(ctx.tp)
    del model, ddp, optimizer
    release()
    seconds = median(fwd_bwd)
    return {
        "layers": layers,
        "ms_fwd_bwd": seconds * 1e3,
        "ms_optimizer_step": median(steps) * 1e3,
        "tflops_per_gpu": model_flops(shape, layers, vocab_padded) / seconds / 1e12 / ctx.tp,
        "activation_gib": max(activations) / GIB if activations else None,
        "static_gib": static / GIB if static is not None else None,
        "peak_gib": max(peaks) / GIB if peaks else None,
        "loss": loss,
        "te_attention_log": log,
    }


def _available(variant: str, ctx: CheckContext) -> str | None:
    """Why `variant` cannot run here, or None."""
    from megatron_chimed.platform.gpu_versions import package_version

    if not ctx.te:
        return ctx.te_reason
    if variant == "flash" and not (
        package_version("flash-attn") or package_version("flash-attn-3")
    ):
        return "flash-attn is not installed"
    if variant == "grad_acc_fusion" and importlib.util.find_spec(FUSED_WGRAD) is None:
        # TE fuses its own layers' weight gradients, but megatron's output layer needs Apex's
        # extension for it (megatron/core/tensor_parallel/layers.py).
        return f"Apex's {FUSED_WGRAD} is not installed"
    return None


def check_slice(ctx: CheckContext) -> CheckResult:
    if reason := ctx.no_fused_adam():
        return skipped("slice", reason)
    shape = ctx.sizes.slice
    layers, half = shape.layers, max(1, shape.layers // 2)
    base = measure(ctx, layers)
    figures: dict = {"shape": shape.__dict__, "tp": ctx.tp, "baseline": base}
    removed = layers - half
    if removed:
        short = measure(ctx, half)
        figures["baseline_half_depth"] = short
        ms_layer = (base["ms_fwd_bwd"] - short["ms_fwd_bwd"]) / removed
        act = base["activation_gib"]
        act_layer = (act - short["activation_gib"]) / removed if act is not None else None
        static = base["static_gib"]
        static_layer = (static - short["static_gib"]) / removed if static is not None else None
    else:
        ms_layer, act_layer, static_layer = base["ms_fwd_bwd"] / layers, None, None
    average = base["ms_fwd_bwd"] / layers
    if ms_layer <= 0:  # below timing noise (the tiny CPU slice): the average says more
        ms_layer = average
    figures.update(
        ms_per_layer_fwd_bwd=ms_layer,
        ms_per_layer_average=average,
        activation_gib_per_layer=act_layer,
        static_gib_per_layer=static_layer,
    )
    problems = [] if math.isfinite(base["loss"]) else [f"baseline loss {base['loss']}"]
    # The baseline is what training builds: TE picks the attention kernel (auto) and
    # gradient-accumulation fusion is off (the builder's setting).
    variants = {
        "flash": ("flash", False),
        "fused": ("fused", False),
        "grad_acc_fusion": ("auto", True),
    }
    ab: dict = {}
    for label, (backend, fusion) in variants.items():
        reason = _available(label, ctx)
        if reason:
            ab[label] = {"skipped": reason}
            continue
        try:
            ab[label] = measure(ctx, layers, backend, fusion)
        except Exception as err:  # the variant's failure is the check's, reported per variant
            ab[label] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            problems.append(f"{label}: {ab[label]['error']}")
        release()  # after the except block: its traceback held the failed variant's tensors
        if "error" in ab[label]:
            continue
        ran = " ".join(ab[label]["te_attention_log"])
        want = EXPECTED_LOG.get(backend)
        if want and ran and want not in ran:
            problems.append(f"{label}: forced {backend} but TE ran {ran!r}")
    figures["ab"] = ab
    act_text = (
        f", {act_layer:.2f} GiB activations + {static_layer:.2f} GiB state per layer, peak "
        f"{base['peak_gib']:.1f} GiB"
        if act_layer is not None and static_layer is not None
        else ""
    )
    parts = [
        f"{label} {v['ms_fwd_bwd']:.0f} ms" if "ms_fwd_bwd" in v else f"{label} skipped"
        for label, v in ab.items()
    ]
    ok = not problems and ms_layer > 0
    return verdict(
        "slice",
        ok,
        figures,
        f"h{shape.hidden} L{layers} s{shape.seq} TP{ctx.tp}: {ms_layer:.1f} ms/layer fwd+bwd, "
        f"{base['tflops_per_gpu']:.3g} TFLOP/s/GPU{act_text}; A/B against TE auto, no "
        f"grad-acc fusion ({base['ms_fwd_bwd']:.0f} ms/step): {', '.join(parts)}"
        + "".join(f"; {p}" for p in problems),
    )
