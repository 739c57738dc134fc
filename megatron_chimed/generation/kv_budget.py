"""How big the dynamic engine's paged KV cache is, and how many answers it keeps in flight.

The cache is a pool of blocks of `block_tokens()` tokens. Its size is a byte budget per rank:
`generation.kv_cache_gb`, or else `generation.kv_memory_fraction` of the GPU memory free once
the model is loaded (on a CPU, `CPU_KV_GB`). Concurrency follows from it: `max_requests` is as
many answers as the pool holds at full length (prompt + max_new_tokens), so no request is ever
paused or evicted for want of blocks (at most `REQUEST_CAP`, or `generation.max_requests`; the
pool is cut to what they need).

Example (13B, TP=2, bf16, H100-80GB): 40 layers x 2 (K, V) x 20 KV heads x 128 x 2 bytes
= 400 KiB per token per rank; ~66 GiB free after the weights x 0.7 = 46 GiB = 121K tokens =
473 blocks of 256, so 118 answers of up to 1024 tokens in flight (a static batch decodes 8).
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass

import torch

from megatron_chimed.config.stages import GenerationConfig
from megatron_chimed.model import unwrap

# Tokens per KV block: flash-attn's paged kernels take multiples of 256; the CPU kernel
# (platform/cpu_inference_compat.py) reads whole blocks, so smaller ones waste less there.
GPU_BLOCK_TOKENS, CPU_BLOCK_TOKENS = 256, 64
CPU_KV_GB = 0.5  # the CPU default: tests and the bench run tiny models
MAX_TOKENS_PER_STEP = 16384  # megatron's default prefill budget per step
CUDA_GRAPHS = 16  # decode batch sizes captured (megatron spaces them up to max_requests)
# At most this many answers in flight unless generation.max_requests says otherwise: a small
# model on a large GPU would otherwise size its request tables, step budget and CUDA graphs
# for ~1e5 answers, far past where batching pays. The pool is then cut to what they need.
REQUEST_CAP = 1024


@dataclass(frozen=True)
class EngineShape:
    """What a DynamicInferenceEngine is built with. `settings` are the config values it was
    sized from: a later call with the same settings and no longer sequences reuses it (its
    pool is not re-measured: the engine itself now holds that memory)."""

    settings: tuple
    block_tokens: int
    kv_bytes: int
    max_sequence_length: int
    max_requests: int
    max_tokens: int
    cuda_graphs: bool
    num_cuda_graphs: int | None

    def serves(self, cfg: GenerationConfig, sequence_length: int) -> bool:
        """Whether an engine of this shape can run a call of `cfg` up to `sequence_length`."""
        return self.settings == settings(cfg) and self.max_sequence_length >= sequence_length


def settings(cfg: GenerationConfig) -> tuple:
    return (cfg.kv_cache_gb, cfg.kv_memory_fraction, cfg.max_requests, use_cuda_graphs(cfg))


def release_memory() -> None:
    """Free a dropped engine's KV pool before a new one is allocated."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def kv_bytes_per_token(model: torch.nn.Module) -> int:
    """K and V of every layer for one token on this rank (megatron's block_size_bytes / block)."""
    config = unwrap(model).config
    tp = config.tensor_model_parallel_size
    kv_heads = config.num_query_groups or config.num_attention_heads
    per_rank = kv_heads // tp if kv_heads >= tp else 1
    return 2 * config.num_layers * per_rank * config.kv_channels * config.params_dtype.itemsize


def kv_budget_bytes(cfg: GenerationConfig) -> int:
    """The KV pool's bytes on this rank (see the module docstring)."""
    if cfg.kv_cache_gb is not None:
        return int(cfg.kv_cache_gb * 1024**3)
    if not torch.cuda.is_available():
        return int(CPU_KV_GB * 1024**3)
    free, _ = torch.cuda.mem_get_info()
    budget = torch.tensor([free * cfg.kv_memory_fraction], dtype=torch.float64, device="cuda")
    # Every rank of the TP group must build the same pool: take the smallest.
    from megatron.core import parallel_state

    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        torch.distributed.all_reduce(
            budget,
            op=torch.distributed.ReduceOp.MIN,
            group=parallel_state.get_tensor_model_parallel_group(),
        )
    # Round to 1/8 GiB so that a few MB of allocator noise does not rebuild the engine.
    eighths = math.floor(float(budget) / 1024**3 * 8)
    return eighths * 1024**3 // 8


def use_cuda_graphs(cfg: GenerationConfig) -> bool:
    """cfg.cuda_graphs, or on with a GPU and off without (CUDA graphs need a GPU)."""
    if cfg.cuda_graphs is None:
        return torch.cuda.is_available()
    if cfg.cuda_graphs and not torch.cuda.is_available():
        raise ValueError("generation.cuda_graphs=true needs a GPU; this machine has none")
    return cfg.cuda_graphs


def block_tokens() -> int:
    return GPU_BLOCK_TOKENS if torch.cuda.is_available() else CPU_BLOCK_TOKENS


def engine_shape(
    model: torch.nn.Module, cfg: GenerationConfig, sequence_length: int
) -> EngineShape:
    """The engine a call needs: sequences of up to `sequence_length` tokens (rounded up to a
    power of two of blocks, so that similar calls share one engine)."""
    core = unwrap(model)
    block = block_tokens()
    blocks = 1 << max(0, math.ceil(math.log2(math.ceil(sequence_length / block))))
    max_sequence = min(blocks * block, core.max_sequence_length)
    kv_bytes = kv_budget_bytes(cfg)
    block_bytes = kv_bytes_per_token(model) * block
    total_blocks = kv_bytes // block_bytes - 1  # megatron keeps one dummy block
    per_request = math.ceil(max_sequence / block)
    tp = core.config.tensor_model_parallel_size
    fits = total_blocks // per_request // tp * tp  # megatron wants a multiple of TP
    if fits < tp:
        raise ValueError(
            f"generation: a KV cache of {kv_bytes / 1024**3:.2f} GiB holds {max(total_blocks, 0)} "
            f"blocks of {block} tokens, not {per_request * tp} for {tp} answer(s) of "
            f"{max_sequence} tokens; raise generation.kv_cache_gb or kv_memory_fraction"
        )
    cap = REQUEST_CAP if cfg.max_requests is None else cfg.max_requests
    max_requests = max(min(fits, cap // tp * tp), tp)
    kv_bytes = min(kv_bytes, (max_requests * per_request + 1) * block_bytes)
    graphs = use_cuda_graphs(cfg)
    return EngineShape(
        settings=settings(cfg),
        block_tokens=block,
        kv_bytes=kv_bytes,
        max_sequence_length=max_sequence,
        max_requests=max_requests,
        max_tokens=max(MAX_TOKENS_PER_STEP, max_requests, max_sequence),
        cuda_graphs=graphs,
        num_cuda_graphs=CUDA_GRAPHS if graphs else None,
    )
