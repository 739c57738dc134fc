"""megatron-core's dynamic inference engine (paged KV cache, continuous batching) on a CPU.

The same convention as `cpu_compat.py`, for the sites that only the dynamic engine reaches:
each row of ``PATCHES`` names the site it covers and carries a ``canary`` that runs the site
unpatched and must fail (``tests/platform/test_cpu_inference_compat.py``). ``apply()`` is a
no-op with CUDA, so on a GPU the engine runs as shipped (flash-attn's paged kernels, CUDA
graphs). `generation/dynamic.py` calls it before it builds a dynamic engine.

What the engine assumes of a GPU, and what stands in for it here:
- pinned host buffers (``pin_memory=True`` / ``.pin_memory()``): plain host memory;
- ``torch.cuda`` streams, events, memory statistics: no-ops (there is one stream, the host);
- the Triton kernel that appends to the KV cache: the context's own torch indexing path;
- einops (flash-attn brings it on GPUs): the one head-merging `rearrange` the path uses;
- flash-attn's paged-KV kernels (``flash_attn_varlen_func`` / ``flash_attn_with_kvcache`` with
  a block table) and the flash-attn version gate in ``Attention.forward``: `paged_attention`,
  the same causal attention over the cache blocks written with torch's SDPA.
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Any

import torch

from megatron_chimed.platform.patches import NullEvent, Patch, apply_patches

_applied = False
_originals: dict[str, Any] = {}

_INFERENCE_CALLERS = "megatron.core.inference"


def _no_pin(factory: Any) -> Any:
    def build(*args: Any, pin_memory: bool = False, **kwargs: Any) -> torch.Tensor:
        return factory(*args, **kwargs)

    return build


class _NullStream:
    """torch.cuda.Stream stand-in: work on the host is already in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any) -> None:
        pass

    def wait_event(self, *args: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _CudaOnCpu(types.ModuleType):
    """`torch.cuda` as the inference modules see it on a CPU: the host is the device."""

    Event = NullEvent
    Stream = _NullStream

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device() -> str:
        return "cpu"

    @staticmethod
    def current_stream(*args: Any, **kwargs: Any) -> _NullStream:
        return _NullStream()

    @staticmethod
    def stream(*args: Any, **kwargs: Any) -> contextlib.nullcontext:
        return contextlib.nullcontext()

    @staticmethod
    def synchronize(*args: Any, **kwargs: Any) -> None:
        pass

    @staticmethod
    def memory_stats(*args: Any, **kwargs: Any) -> dict:
        return {}


class _TorchForInferenceOnCpu(types.ModuleType):
    """`torch` for one megatron inference module: tensor factories ignore `pin_memory`, and
    `torch.cuda` is `_CudaOnCpu`. Only that module's `torch` name is replaced."""

    cuda = _CudaOnCpu("torch.cuda")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


_TORCH_FOR_INFERENCE = _TorchForInferenceOnCpu("torch")
for _name in ("tensor", "zeros", "ones", "full", "zeros_like", "arange"):
    setattr(_TORCH_FOR_INFERENCE, _name, _no_pin(getattr(torch, _name)))
# `empty` gives zeros: the KV pool is never cleared, and `paged_attention` reads whole blocks,
# past a request's keys too. Masked-out keys must be finite (a masked NaN still poisons SDPA,
# 0 x NaN), and zeroing the pool once is cheaper than zeroing the unwritten keys every step.
_TORCH_FOR_INFERENCE.empty = _no_pin(torch.zeros)
_TORCH_FOR_INFERENCE.empty_like = _no_pin(torch.zeros_like)

_pin_memory = torch.Tensor.pin_memory


def _pin_memory_on_cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """`t.pin_memory()` asked by megatron's inference code: the tensor itself (there is no
    device to pin for); torch's own answer for every other caller."""
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller.startswith(_INFERENCE_CALLERS):
        return self
    return _pin_memory(self, *args, **kwargs)


def paged_attention(
    self: Any,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    seqlens_k: torch.Tensor,
    block_table: torch.Tensor,
    is_decode_only: bool,
    softmax_offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """`Attention.flash_decode_and_prefill` in torch: causal attention of each request's new
    tokens over its cached keys, read through the block table, for every request at once.

    q: [tokens, 1, heads, dim] (tokens of all requests back to back, `cu_seqlens_q` marks the
    requests); k, v: the cache, [blocks, block_size, kv_heads, dim]; `seqlens_k`: each request's
    key count, its new tokens included (they are already appended). A request's i-th new
    token sits at position seqlens_k - q_len + i and sees keys up to it. Returns
    [tokens, 1, heads, dim]. The fixed number of ops (no loop over requests) keeps the host
    cost of a step independent of how many requests it batches.
    """
    if softmax_offset is not None:
        raise NotImplementedError("attention sinks are not supported on CPU")
    requests = seqlens_k.numel()
    q = q.squeeze(1)
    tokens, heads, dim = q.shape
    device = q.device
    q_lens = cu_seqlens_q[1 : requests + 1] - cu_seqlens_q[:requests]
    q_max = max(int(q_lens.max()), 1) if requests else 1
    # Only the blocks that hold keys: the table is as wide as the longest possible sequence.
    needed = -(-int(seqlens_k.max()) // k.size(1)) if requests else 1
    blocks = block_table[:requests, : max(needed, 1)].clamp(min=0).long()
    # [requests, blocks * block_size, kv_heads, dim]; index_select copies whole blocks (about
    # 3x faster than advanced indexing here). Past a request's keys they hold zeros or an
    # earlier request's keys (the pool is zero-filled when allocated, see `empty` above): finite,
    # so the mask below removes them exactly.
    keys = k.index_select(0, blocks.flatten()).view(requests, -1, *k.shape[2:])
    values = v.index_select(0, blocks.flatten()).view(requests, -1, *v.shape[2:])
    k_pos = torch.arange(keys.size(1), device=device)
    if keys.size(2) != heads:  # grouped-query attention: each kv head serves heads/kv_heads
        keys = keys.repeat_interleave(heads // keys.size(2), dim=2)
        values = values.repeat_interleave(heads // values.size(2), dim=2)
    # Scatter the tokens into a [requests, q_max] grid; padding rows attend to key 0 only.
    request_of = torch.repeat_interleave(torch.arange(requests, device=device), q_lens)
    local = torch.arange(request_of.numel(), device=device) - cu_seqlens_q[:requests][request_of]
    grid = q.new_zeros(requests, q_max, heads, dim)
    grid[request_of, local] = q[: request_of.numel()]
    first = (seqlens_k - q_lens).view(requests, 1, 1)
    q_pos = first + torch.arange(q_max, device=device).view(1, q_max, 1)
    k_pos = k_pos.view(1, 1, -1)
    allowed = (k_pos <= q_pos) & (k_pos < seqlens_k.view(requests, 1, 1))
    allowed[..., 0] = True
    scale = getattr(self, "softmax_scale", None) or dim**-0.5
    out = torch.nn.functional.scaled_dot_product_attention(
        grid.transpose(1, 2),
        keys.transpose(1, 2).to(q.dtype),
        values.transpose(1, 2).to(q.dtype),
        attn_mask=allowed.unsqueeze(1),
        scale=scale,
    ).transpose(1, 2)
    result = q.new_zeros(tokens, heads, dim)
    result[: request_of.numel()] = out[request_of, local]
    return result.unsqueeze(1)


def _flash_attn_gate(*args: Any, **kwargs: Any) -> bool:
    """`is_fa_min_version` as `Attention.forward` asks it for dynamic batching: on a CPU the
    paged kernels are `paged_attention`'s, so the version requirement is met."""
    return True


_CONTEXT = "megatron.core.inference.contexts.dynamic_context"
_CONTROLLER = "megatron.core.inference.text_generation_controllers.text_generation_controller"
_ATTENTION = "megatron.core.transformer.attention"

# A DynamicInferenceContext for a 1-layer model in a world of one (what the engine builds).
_CONTEXT_CANARY = (
    "import os, torch, torch.distributed as d;"
    "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=os.environ.get('CANARY_PORT','29533'));"
    "d.init_process_group('gloo', rank=0, world_size=1);"
    "from megatron.core import parallel_state as ps; ps.initialize_model_parallel(1);"
    "from megatron.core.transformer import TransformerConfig as C;"
    "from megatron.core.inference.config import InferenceConfig as I;"
    "from megatron.core.inference.contexts.dynamic_context import DynamicInferenceContext as D;"
    "from megatron.core.transformer.enums import AttnBackend as B;"
    "c = C(num_layers=1, hidden_size=8, num_attention_heads=2, params_dtype=torch.float32,"
    " use_cpu_initialization=True, attention_backend=B.local);"
    "ctx = D(c, I(block_size_tokens=16, buffer_size_gb=0.001, max_sequence_length=64,"
    " max_requests=4, max_tokens=64));"
)

# The context's bookkeeping, then a controller over a 1-layer model (what the engine builds).
_CONTROLLER_CANARY = (
    _CONTEXT_CANARY.replace(
        "ctx = D(",
        "from megatron.core.models.gpt import GPTModel as G;"
        "from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec as s;"
        "from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import"
        " GPTInferenceWrapper as W;"
        "from megatron.core.inference.text_generation_controllers.text_generation_controller import"
        " TextGenerationController as T;"
        "m = G(c, s(), vocab_size=16, max_sequence_length=64);"
        "ctx = D(",
    )
    + "T(W(m, ctx), None);"
)


def _merge_heads(tensor: torch.Tensor, pattern: str) -> torch.Tensor:
    """einops.rearrange for the one pattern `Attention.forward` uses on the dynamic path."""
    if pattern != "s b h d -> s b (h d)":
        raise NotImplementedError(f"rearrange pattern {pattern!r}")
    return tensor.flatten(2)


PATCHES: tuple[Patch, ...] = (
    Patch(
        _CONTEXT,
        "torch",
        _TORCH_FOR_INFERENCE,
        site="dynamic_context.DynamicInferenceContext: pinned host buffers, "
        "device=torch.cuda.current_device() tensors, torch.cuda.Event",
        canary=_CONTEXT_CANARY,
    ),
    Patch(
        "torch.Tensor",
        "pin_memory",
        _pin_memory_on_cpu,
        site="t.pin_memory() on the context's host bookkeeping buffers (megatron.core.inference "
        "callers only)",
        canary="import torch, types; g = {'__name__': 'megatron.core.inference.x'};"
        "types.FunctionType((lambda t: t.pin_memory()).__code__, g)(torch.zeros(1))",
        expect="NVIDIA driver|not compiled with CUDA|accelerator",
    ),
    Patch(
        _CONTEXT,
        "triton_append_key_value_cache",
        None,
        site="DynamicInferenceContext.append_key_value_cache writes the KV cache with a Triton "
        "kernel that asserts CUDA tensors; None selects its own torch indexing path",
        canary="import torch; from megatron.core.inference.contexts.dynamic_context import"
        " triton_append_key_value_cache as f; z = torch.zeros(1, 1, 1, 1);"
        "f(layer_number=0, key=z, value=z, memory_buffer=torch.zeros(2, 1, 1, 1, 1, 1),"
        " padded_active_token_count=1, token_to_block_idx=torch.zeros(1, dtype=torch.int32),"
        " token_to_local_position_within_kv_block=torch.zeros(1, dtype=torch.int32))",
        expect="CUDA",
    ),
    Patch(
        _CONTROLLER,
        "torch",
        _TORCH_FOR_INFERENCE,
        site="TextGenerationController._init_dynamic_sampling_tensors: pinned host buffers, "
        "torch.cuda.Stream / Event for the asynchronous sample copies",
        canary=_CONTROLLER_CANARY,
    ),
    Patch(
        _ATTENTION,
        "is_fa_min_version",
        _flash_attn_gate,
        site="Attention.forward asserts flash-attn >= 2.7.3 for dynamic batching (its paged "
        "kernels); on CPU `paged_attention` is the kernel",
        canary="from megatron.core.transformer.attention import is_fa_min_version as v;"
        "assert v('2.7.3'), 'flash-attn too old'",
        expect="No module named 'flash_attn'|flash-attn too old",
    ),
    Patch(
        _ATTENTION,
        "rearrange",
        _merge_heads,
        site="Attention.forward merges the heads of the dynamic path's output with "
        "einops.rearrange (None without einops, which comes with flash-attn on GPUs)",
        canary="import torch; from megatron.core.transformer.attention import rearrange as r;"
        "r(torch.zeros(1, 1, 2, 2), 's b h d -> s b (h d)')",
        expect="NoneType",
    ),
    Patch(
        f"{_ATTENTION}.Attention",
        "flash_decode_and_prefill",
        paged_attention,
        site="Attention.flash_decode_and_prefill: flash-attn's flash_attn_varlen_func / "
        "flash_attn_with_kvcache over the block table (CUDA kernels, absent on CPU)",
        canary="import torch; from megatron.core.transformer.attention import Attention as A;"
        "z = torch.zeros(1, 1, 1, 8); i = torch.tensor([0, 1], dtype=torch.int32);"
        "A.flash_decode_and_prefill(type('S', (), {'training': False, 'layer_number': 1,"
        " 'config': type('C', (), {'window_size': None, 'window_attn_skip_freq': None})(),"
        " '_resolve_flash_version': lambda self: (False, False), 'batch_invariant_mode': False})(),"
        " z, torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, 1, 8), 1, 1, i, i,"
        " torch.tensor([1], dtype=torch.int32), torch.zeros(1, 1, dtype=torch.int32), False)",
        expect="NoneType|not callable",
    ),
)


def apply(without: str | None = None) -> bool:
    """Let megatron-core's dynamic inference engine run on the CPU (a no-op with CUDA).
    ``without`` leaves one patch out (the canaries). Returns whether patches are in force."""
    global _applied
    if torch.cuda.is_available():
        return False
    if not _applied:
        apply_patches(PATCHES, _originals, without)
        _applied = True
    return True
