"""FLOPs per step, expected step time and MFU, and the data-parallel traffic of each step.

FLOPs are Megatron-LM's `num_floating_point_operations` (megatron/training/training.py) for a
dense GQA/MHA model with SwiGLU: 3 (forward, weight-gradient and data-gradient GEMMs) x 2 (one
multiply-add) x tokens x the GEMM parameters (QKV, output projection, FC1 = 2 ffn, FC2, the
vocab projection: 6 x params x tokens, embedding lookup and norms excluded), plus the attention
GEMMs QK^T and PV, 6 x q_proj x seq^2 per sequence and layer (causal: half of each is
computed). Packed SFT sequences attend within each sample, so the attention term is an upper
bound there.

Time is an estimate: the compute at an assumed fraction of the GPU's peak dense bf16 rate
(`efficiency`, a flag: Megatron-LM reports up to 47% MFU on H100), plus whatever of the DP
traffic the schedule cannot hide. The traffic, per step and GPU, with the distributed
optimizer: a reduce-scatter of the fp32 gradient buffer and an all-gather of the bf16 param
buffer, each moving (DP-1)/DP of its buffer over the link (NCCL's ring bus bandwidth), at an
assumed fraction of the link's rate (`comm_efficiency`, a flag). megatron DDP launches each
bucket's reduce-scatter as its gradients complete, during the backward of the last micro-batch
only (the others run under no_sync), so that backward is the window that can hide it; the
last bucket (the embedding side) is reduced after the backward ends. Without
parallel.overlap_param_gather the all-gather runs after the optimizer step, exposed; with it,
each bucket's gather waits in the next step's first forward (pre-hooks), which hides up to that
forward's time.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_chimed.plan import params
from megatron_chimed.plan.gpus import Gpu, link_gb_s
from megatron_chimed.plan.memory import GRAD_BYTES
from megatron_chimed.plan.shape import DTYPE_BYTES, RunShape

DEFAULT_EFFICIENCY = 0.40
DEFAULT_COMM_EFFICIENCY = 0.80  # NCCL bus bandwidth as a fraction of the link's rate


@dataclass(frozen=True)
class Flops:
    linear: float  # 6 x GEMM params x tokens
    attention: float  # the seq^2 terms
    gemm_params: int  # the whole model's GEMM weights (not per rank)
    tokens: int

    @property
    def total(self) -> float:
        return self.linear + self.attention


def step_flops(shape: RunShape) -> Flops:
    """Megatron-LM's `num_floating_point_operations` for one global batch (see above)."""
    m = shape.model
    h, layers = m.hidden_size, m.num_layers
    q = m.num_attention_heads * m.head_dim
    kv = m.num_query_groups * m.head_dim
    head = 1 if shape.value_head else shape.vocab_padded
    gemm_params = layers * (h * (q + 2 * kv) + q * h + 3 * h * m.ffn_hidden_size) + h * head
    tokens = shape.global_batch * shape.seq
    linear = 3 * 2 * tokens * gemm_params
    attention = 3 * 2 * q * layers * shape.global_batch * shape.seq**2
    return Flops(float(linear), float(attention), gemm_params, tokens)


@dataclass(frozen=True)
class StepEstimate:
    flops: Flops
    compute_s: float
    link: str
    link_gb_s: float
    reduce_bytes: int  # per GPU, over the link: grads (reduce-scatter, or all-reduce)
    gather_bytes: int  # per GPU: params all-gather (distributed optimizer)
    reduce_s: float
    gather_s: float
    window_s: float  # backward of the last micro-batch: what can hide the grad reduce
    reduce_exposed_s: float
    gather_exposed_s: float
    gather_hideable_s: float  # what overlap_param_gather would hide (first forward)
    step_s: float
    mfu: float
    tokens_per_s_per_gpu: float


def step_estimate(
    shape: RunShape,
    gpu: Gpu,
    efficiency: float = DEFAULT_EFFICIENCY,
    interconnect: str = "auto",
    comm_efficiency: float = DEFAULT_COMM_EFFICIENCY,
) -> StepEstimate:
    for name, value in (("--efficiency", efficiency), ("--comm-efficiency", comm_efficiency)):
        if not 0 < value <= 1:
            raise ValueError(f"{name}={value}: expected a fraction in (0, 1]")
    flops = step_flops(shape)
    peak = gpu.peak_bf16_tflops * 1e12
    compute_s = flops.total / (shape.world * peak * efficiency)
    link, gb_s = link_gb_s(gpu, interconnect, spans_nodes=shape.nodes > 1)
    rate = gb_s * 1e9 * comm_efficiency
    buckets = params.buffer_layout(shape)
    buffer = params.buffer_numel(buckets)
    ring = (shape.dp - 1) / shape.dp  # each GPU sends (and receives) this share of the buffer
    last_bucket = buckets[-1].end - buckets[-1].start if buckets else 0
    if shape.distributed_optimizer:
        reduce_bytes = round(ring * GRAD_BYTES * buffer)
        gather_bytes = round(ring * DTYPE_BYTES[shape.precision] * buffer)
        last_s = ring * GRAD_BYTES * last_bucket / rate
    else:  # an all-reduce: reduce-scatter then all-gather of the grads
        reduce_bytes, gather_bytes = round(2 * ring * GRAD_BYTES * buffer), 0
        last_s = 2 * ring * GRAD_BYTES * last_bucket / rate
    reduce_s, gather_s = reduce_bytes / rate, gather_bytes / rate
    micro_s = compute_s / shape.num_microbatches
    window_s = micro_s * 2 / 3  # backward = 2 of the 3 GEMM passes
    reduce_exposed = max(reduce_s - window_s, last_s) if shape.dp > 1 else 0.0
    gather_hideable = min(gather_s, micro_s / 3)
    gather_exposed = gather_s - gather_hideable if shape.overlap_param_gather else gather_s
    step_s = compute_s + reduce_exposed + gather_exposed
    return StepEstimate(
        flops=flops,
        compute_s=compute_s,
        link=link,
        link_gb_s=gb_s,
        reduce_bytes=reduce_bytes,
        gather_bytes=gather_bytes,
        reduce_s=reduce_s,
        gather_s=gather_s,
        window_s=window_s,
        reduce_exposed_s=reduce_exposed,
        gather_exposed_s=gather_exposed,
        gather_hideable_s=gather_hideable,
        step_s=step_s,
        mfu=flops.total / (step_s * shape.world * peak),
        tokens_per_s_per_gpu=flops.tokens / step_s / shape.world,
    )
