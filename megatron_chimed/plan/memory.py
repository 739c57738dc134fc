"""Memory per GPU, itemised, with a verdict against the GPU's memory and what to change.

Weights, gradients and optimizer state follow megatron's buffers (plan/params.py): with the
distributed optimizer DDP moves the weights into a padded param buffer, the gradients live in a
grad buffer of the same length, in fp32 because training/optim.py sets grad_reduce_in_fp32
(megatron's DistributedDataParallelConfig default is the params' dtype), and each DP rank keeps
fp32 master weights and Adam's m and v for its shard only. This is the 6 + 12/DP bytes per
parameter of Megatron-LM's megatron/training/theoretical_memory_usage.py, with the padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_chimed.plan import activations, params
from megatron_chimed.plan.gpus import GIB, Gpu
from megatron_chimed.plan.shape import DTYPE_BYTES, RunShape

GRAD_BYTES = 4  # fp32: training/optim.py grad_reduce_in_fp32=True
ADAM_BYTES = 8  # exp_avg and exp_avg_sq, fp32
# Outside the tensors counted here: the CUDA context, NCCL communicator buffers, cuBLAS / TE
# workspaces (an allowance of 2 GiB, not a measurement), and allocator fragmentation, for which
# Megatron-LM adds 5% to the activations (theoretical_memory_usage.py, `overhead_factor`).
WORKSPACE_FIXED = 2 * GIB
WORKSPACE_FRACTION = 0.05


@dataclass(frozen=True)
class Item:
    name: str
    bytes: int
    note: str


@dataclass(frozen=True)
class MemoryPlan:
    items: tuple[Item, ...]
    capacity: int

    @property
    def total(self) -> int:
        return sum(i.bytes for i in self.items)

    @property
    def margin(self) -> int:
        return self.capacity - self.total

    @property
    def fits(self) -> bool:
        return self.margin >= 0

    @property
    def biggest(self) -> Item:
        return max(self.items, key=lambda i: i.bytes)


@dataclass(frozen=True)
class StateBytes:
    """Weights, grads and optimizer state of one GPU, and the counts behind them."""

    params: int  # parameters on this TP rank
    buffer: int  # DDP buffer elements, padding included
    shard: int  # elements the most loaded DP rank's optimizer owns
    weights: int
    grads: int
    optimizer: int


def state_bytes(shape: RunShape) -> StateBytes:
    """Weights, fp32 grads and optimizer state as megatron allocates them (module docstring)."""
    numels = [p.numel for p in params.parameters(shape)]
    buckets = params.buffer_layout(shape, numels)
    buffer = params.buffer_numel(buckets)
    weight_bytes = DTYPE_BYTES[shape.precision]
    # fp32 params are their own master copy (megatron's shard_fp32_groups are views).
    master = 4 if weight_bytes < 4 else 0
    if shape.distributed_optimizer:
        shard = max(params.shard_numels(buckets, shape.dp))
        weights = weight_bytes * buffer  # DDP's param buffer replaces the parameters
    else:
        shard = sum(numels)
        weights = weight_bytes * shard
    return StateBytes(
        params=sum(numels),
        buffer=buffer,
        shard=shard,
        weights=weights,
        grads=GRAD_BYTES * buffer,
        optimizer=(master + ADAM_BYTES) * shard,
    )


def memory_plan(shape: RunShape, gpu: Gpu, recompute: str | None = None) -> MemoryPlan:
    """Every item of one GPU's memory at the peak (end of a micro-batch's forward), under
    `recompute` (default: the config's, parallel.recompute_granularity)."""
    recompute = recompute or shape.recompute
    state = state_bytes(shape)
    prec = shape.precision
    acts = activations.activation_bytes(shape, recompute)
    kept, transient = activations.logits_bytes(shape)
    logits = kept + transient
    replicated = sum(p.numel for p in params.parameters(shape) if not p.tp_split)
    layer = sum(b for _, b in activations.layer_items(shape))
    tokens = f"{shape.micro_batch} x {shape.seq}"
    shard_note = (
        f"{state.shard / 1e6:,.1f} M elements, 1/{shape.dp} of the buffer"
        if shape.distributed_optimizer
        else f"{state.shard / 1e6:,.1f} M elements (no distributed optimizer)"
    )
    items = (
        Item(
            f"{prec} weights",
            state.weights,
            f"{state.params / 1e9:.3f} B params on this TP rank (vocab {shape.vocab_padded} / "
            f"TP {shape.tp}; {replicated / 1e3:,.0f} K norm/head params replicated)",
        ),
        Item(
            "fp32 gradient buffer",
            state.grads,
            f"{state.buffer / 1e6:,.1f} M elements incl. padding; fp32: grad_reduce_in_fp32",
        ),
        Item(
            "optimizer: fp32 master + Adam m, v" if prec != "fp32" else "optimizer: Adam m, v",
            state.optimizer,
            shard_note,
        ),
        Item(
            f"activations (recompute {recompute})",
            acts,
            f"{shape.model.num_layers} layers x {layer / 2**20:,.1f} MiB at {tokens} tokens",
        ),
        Item(
            "logits / loss",
            logits,
            f"fp32 {tokens} x {shape.vocab_padded // shape.tp} kept + its masked copy"
            if logits
            else "value head: no vocab logits",
        ),
        Item(
            "workspace allowance",
            WORKSPACE_FIXED + round(WORKSPACE_FRACTION * (acts + logits)),
            "2 GiB CUDA context/NCCL/cuBLAS + 5% of activations (Megatron-LM)",
        ),
    )
    return MemoryPlan(items, gpu.memory_bytes)


def totals_by_recompute(shape: RunShape, gpu: Gpu) -> dict[str, int]:
    """The total under each recompute mode (activations.RECOMPUTE_MODES)."""
    return {mode: memory_plan(shape, gpu, mode).total for mode in activations.RECOMPUTE_MODES}


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def _needs(total: int, capacity: int) -> str:
    return f"{_gib(total)} ({'fits' if total <= capacity else 'still does not fit'})"


def _more_dp(shape: RunShape, plan: MemoryPlan) -> str:
    """The smallest DP whose optimizer shard makes it fit, and one the batch divides by."""
    if not shape.distributed_optimizer:
        return "parallel.use_distributed_optimizer=true: shard the optimizer over DP"
    state = state_bytes(shape)
    rest = plan.total - state.optimizer
    if rest >= plan.capacity:
        return f"more data parallelism cannot do it: without the optimizer it is still {_gib(rest)}"
    # Only the optimizer shard shrinks with DP (as 1/DP); everything else stays.
    per_element = state.optimizer / state.shard
    dp = math.ceil(per_element * state.params / (plan.capacity - rest))
    micro_batches = shape.global_batch // shape.micro_batch
    usable = next((d for d in range(dp, micro_batches + 1) if micro_batches % d == 0), None)
    batch = (
        f"global batch {shape.global_batch // shape.per_prompt} takes DP {usable} "
        f"({usable * shape.tp} GPUs)"
        if usable
        else f"raise training.global_batch_size to a multiple of micro-batch x {dp}"
    )
    return f"more data parallelism: DP >= {dp} ({dp * shape.tp} GPUs); {batch}"


def suggestions(shape: RunShape, gpu: Gpu) -> list[str]:
    """What would make a config that does not fit fit, each with the total it would need."""
    plan = memory_plan(shape, gpu)
    cap = plan.capacity
    out = [_more_dp(shape, plan)]
    for mode in ("selective", "full"):
        total = memory_plan(shape, gpu, mode).total
        out.append(f"recompute={mode}: {_needs(total, cap)}; parallel.recompute_granularity={mode}")
    if shape.micro_batch > shape.per_prompt:
        total = memory_plan(shape.replace(micro_batch=shape.per_prompt), gpu).total
        out.append(f"training.micro_batch_size=1: {_needs(total, cap)}")
    if shape.stage == "rm":
        # The RM's seq_length is a cap (stages/rm.py cuts each micro-batch to its longest
        # answer): a shorter cap bounds the worst micro-batch.
        seq = shape.seq // 2
        while seq >= 256 and memory_plan(shape.replace(seq=seq), gpu).total > cap:
            seq //= 2
        if seq >= 256:
            total = memory_plan(shape.replace(seq=seq), gpu).total
            out.append(f"training.seq_length={seq} (the RM's cap): {_needs(total, cap)}")
    if shape.model.num_attention_heads % (2 * shape.tp) == 0 and shape.tp < 8:
        tp = 2 * shape.tp
        # Same GPUs at half the DP when DP is even, else twice the GPUs at the same DP.
        dp = shape.dp // 2 if shape.dp % 2 == 0 else shape.dp
        gpus = "same GPUs" if dp < shape.dp else "twice the GPUs"
        total = memory_plan(shape.replace(tp=tp, dp=dp, sequence_parallel=True), gpu).total
        out.append(
            f"parallel.tensor_model_parallel_size={tp} ({gpus}, DP {dp}): {_needs(total, cap)}"
        )
    return out
