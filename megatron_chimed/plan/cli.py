"""`chimed plan [hydra overrides...] [--gpu h100-80g] [--interconnect auto] ...`.

Before sbatch: does the composed config fit on the GPU, and how fast will a step be. The
overrides are `chimed train`'s; the GPU type is not in the config, so it is a flag. Prints the
memory per GPU item by item with a verdict and, when it does not fit, what would; then FLOPs,
step time, MFU and the data-parallel traffic per step. Exit status: 0 fits, 1 does not fit,
2 a config or flag error (one line naming the key). Every time and MFU is an estimate built on
the assumptions it prints.
"""

from __future__ import annotations

import argparse
import sys

from megatron_chimed.plan import activations, memory
from megatron_chimed.plan.flops import (
    DEFAULT_COMM_EFFICIENCY,
    DEFAULT_EFFICIENCY,
    StepEstimate,
    step_estimate,
)
from megatron_chimed.plan.gpus import GIB, GPUS, INTERCONNECTS, Gpu, gpu
from megatron_chimed.plan.shape import PAPER_RM_RESPONSES, RunShape, run_shape

DEFAULT_GPU = "h100-80g"
EXIT_DOES_NOT_FIT = 1
EXIT_ERROR = 2


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(
        prog="chimed plan",
        usage="chimed plan [group=option ...] [key=value ...] [--gpu GPU] [options]",
        description="Memory per GPU, step time and MFU of a training config, before sbatch.",
        epilog="Other arguments are the Hydra overrides of `chimed train` (its --help lists the "
        "config groups), e.g. chimed plan experiment=chimed_paper_cpt launcher.nodes=4",
    )
    ap.add_argument("--gpu", default=DEFAULT_GPU, choices=sorted(GPUS), help="GPU type")
    ap.add_argument(
        "--interconnect",
        default="auto",
        choices=["auto", *INTERCONNECTS],
        help="link of the data-parallel ring; auto: NVLink in one node, else the GPU's usual "
        "InfiniBand (NDR for H100/H200, HDR for A100)",
    )
    ap.add_argument(
        "--efficiency",
        type=float,
        default=DEFAULT_EFFICIENCY,
        help="assumed fraction of peak bf16 the GEMMs sustain (default %(default)s)",
    )
    ap.add_argument(
        "--comm-efficiency",
        type=float,
        default=DEFAULT_COMM_EFFICIENCY,
        help="assumed fraction of the link rate NCCL reaches (default %(default)s)",
    )
    ap.add_argument(
        "--responses",
        type=int,
        default=PAPER_RM_RESPONSES,
        help="stage=rm: ranked answers per prompt, forwarded together (paper: %(default)s)",
    )
    return ap.parse_known_args(argv)


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def header(shape: RunShape, gpu_name: str) -> list[str]:
    m = shape.model
    per_node = shape.world // shape.nodes
    attention = (
        "unfused attention (keeps s x s probabilities)"
        if shape.stores_scores
        else "flash / cuDNN fused attention"
    )
    spec = "Transformer Engine spec" if shape.impl == "transformer_engine" else "local spec"
    return [
        f"chimed plan: stage={shape.stage} model={m.name} ({m.num_layers} layers, hidden "
        f"{m.hidden_size}, FFN {m.ffn_hidden_size}, vocab {m.vocab_size} -> "
        f"{shape.vocab_padded}) on {shape.world} x {gpu_name} ({shape.nodes} node(s) x "
        f"{per_node})",
        f"  TP {shape.tp} (sequence parallel {'on' if shape.sequence_parallel else 'off'}) x "
        f"DP {shape.dp}, distributed optimizer {'on' if shape.distributed_optimizer else 'off'}"
        f", {shape.precision}, {spec}, {attention}",
        f"  micro-batch {shape.micro_batch} x {shape.seq} tokens, global batch "
        f"{shape.global_batch} sequences = {shape.num_microbatches} micro-batch(es) per DP rank"
        + (f" (RM: {shape.per_prompt} answers per prompt)" if shape.per_prompt > 1 else ""),
    ]


def _recompute_source(shape: RunShape) -> str:
    if shape.recompute == "none":
        return "parallel.recompute_granularity=null"
    return f"parallel.recompute_granularity={shape.recompute}"


def memory_lines(shape: RunShape, plan: memory.MemoryPlan, device: Gpu) -> list[str]:
    lines = ["", "memory per GPU (GiB)"]
    lines += [f"  {i.name:<36} {_gib(i.bytes):>7}  {i.note}" for i in plan.items]
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(
        f"  {'total':<36} {_gib(plan.total):>7}  of {_gib(plan.capacity)}: {verdict}, "
        f"margin {_gib(plan.margin)} GiB ({plan.margin / plan.capacity:+.0%})"
    )
    totals = memory.totals_by_recompute(shape, device)
    lines.append(
        f"  recompute ({_recompute_source(shape)}: planned as {shape.recompute}): "
        + ", ".join(f"{mode} {_gib(total)}" for mode, total in totals.items())
    )
    ours = sum(b for _, b in activations.layer_items(shape))
    reference = activations.megatron_reference_per_layer(shape)
    lines.append(
        f"  per layer {ours / 2**20:,.1f} MiB; Megatron-LM's theoretical_memory_usage "
        f"(GeLU MLP, dropout, SP) would say {reference / 2**20:,.1f} MiB"
    )
    return lines


def step_lines(shape: RunShape, est: StepEstimate, args: argparse.Namespace) -> list[str]:
    f = est.flops
    dp_note = (
        f"reduce-scatter fp32 grads {_gib(est.reduce_bytes)} GiB + all-gather "
        f"{shape.precision} params {_gib(est.gather_bytes)} GiB per GPU"
        if shape.distributed_optimizer
        else f"all-reduce fp32 grads {_gib(est.reduce_bytes)} GiB per GPU"
    )
    hidden = est.reduce_s - est.reduce_exposed_s
    return [
        "",
        "step (estimates)",
        f"  FLOPs per step   {f.total:.3e} = 6 x {f.gemm_params / 1e9:.2f} B GEMM params x "
        f"{f.tokens:,} tokens ({f.linear:.3e}) + attention {f.attention:.3e} "
        "(Megatron-LM num_floating_point_operations)",
        f"  compute          {est.compute_s:.3f} s at {args.efficiency:.0%} of "
        f"{gpu(args.gpu).peak_bf16_tflops:g} TFLOP/s (assumed efficiency, --efficiency)",
        f"  DP traffic       {dp_note} over {est.link} {est.link_gb_s:g} GB/s x "
        f"{args.comm_efficiency:.0%} (assumed, --interconnect, --comm-efficiency)",
        f"  overlap          grad reduce {est.reduce_s:.3f} s, of which {hidden:.3f} s hides in "
        f"the last micro-batch's backward ({est.window_s:.3f} s), {est.reduce_exposed_s:.3f} s "
        "exposed; "
        + (
            f"param all-gather {est.gather_s:.3f} s, {est.gather_exposed_s:.3f} s exposed "
            f"(overlap_param_gather is on: {est.gather_hideable_s:.3f} s hides in the first "
            "forward)"
            if shape.overlap_param_gather
            else f"param all-gather {est.gather_s:.3f} s exposed (overlap_param_gather is off; "
            f"on, it would hide {est.gather_hideable_s:.3f} s)"
        ),
        f"  step             {est.step_s:.3f} s, MFU {est.mfu:.0%}, "
        f"{est.tokens_per_s_per_gpu:,.0f} tokens/s per GPU; {duration(shape, est.step_s)}",
    ]


def duration(shape: RunShape, step_s: float) -> str:
    """The run's length at this step time, where the config knows its number of steps."""
    if shape.stage == "rm":  # stages/rm.py derives the steps from rm.epochs and the data
        return f"100 iterations = {100 * step_s / 3600:.2f} h (rm.epochs sets the count)"
    hours = f"{shape.train_iters} iterations = {shape.train_iters * step_s / 3600:.1f} h"
    # stages/rs.py samples, generates and scores before it trains: not counted here
    return hours + (" of fine-tuning (generation not counted)" if shape.stage == "rs" else "")


def plan_text(shape: RunShape, args: argparse.Namespace) -> tuple[str, memory.MemoryPlan]:
    device = gpu(args.gpu)
    plan = memory.memory_plan(shape, device)
    lines = header(shape, args.gpu) + memory_lines(shape, plan, device)
    if not plan.fits:
        lines += ["", "to make it fit"] + [f"  - {s}" for s in memory.suggestions(shape, device)]
    est = step_estimate(shape, device, args.efficiency, args.interconnect, args.comm_efficiency)
    return "\n".join(lines + step_lines(shape, est, args)), plan


def verdict_line(plan: memory.MemoryPlan, gpu_name: str) -> str:
    """One line for launch/submit.py: the verdict, the totals and the biggest item."""
    big = plan.biggest
    return (
        f"plan: {'fits' if plan.fits else 'does not fit'} on {gpu_name}: "
        f"{_gib(plan.total)} of {_gib(plan.capacity)} GiB per GPU (margin "
        f"{_gib(plan.margin)} GiB); biggest item: {big.name} {_gib(big.bytes)} GiB"
    )


def check(overrides: list[str], gpu_name: str = DEFAULT_GPU) -> tuple[bool, str]:
    """(fits, one line) for `overrides` on `gpu_name`: what launch/submit.py asks before sbatch.
    Raises ValueError (ConfigError included) naming the key of a config that cannot be split."""
    from megatron_chimed.config import load

    plan = memory.memory_plan(run_shape(load(overrides)), gpu(gpu_name))
    return plan.fits, verdict_line(plan, gpu_name)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    from megatron_chimed.config import load

    try:
        shape = run_shape(load(overrides), responses=args.responses)
        text, plan = plan_text(shape, args)
    except ValueError as err:  # ConfigError is one: the message names the key
        print(f"chimed plan: {err}", file=sys.stderr)
        return EXIT_ERROR
    print(text)
    return 0 if plan.fits else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(main())
