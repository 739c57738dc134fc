"""The one place where megatron-core is taught to run without CUDA.

megatron-core assumes a GPU in a few dozen places (``torch.cuda.current_device()`` as a device,
the CUDA RNG tracker, ``device="cuda"`` literals, CUDA streams and events). On a CPU-only machine
we redirect exactly those sites to the CPU. Every patch is a row of ``PATCHES``: what it replaces,
the megatron-core site it covers, and a ``canary`` that calls that site unpatched and must fail.
``tests/platform/test_cpu_compat.py`` runs each canary in a fresh process; the day one stops
failing, megatron-core has fixed the site and the patch should be deleted.

Nothing here runs on a machine with CUDA: ``apply()`` is a no-op there, so GPU runs use
megatron-core exactly as shipped.
"""

from __future__ import annotations

import contextlib
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

import torch

from megatron_chimed.platform.patches import NullEvent, Patch, apply_patches

_applied = False


def _cpu_device() -> str:
    return "cpu"


def _get_rng_state(*args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    torch.set_rng_state(state)


def _causal_mask(sq: int, skv: int | None = None) -> torch.Tensor:
    # Same mask as megatron's, built where the activations live.
    skv = sq if skv is None else skv
    return torch.triu(torch.ones(sq, skv, dtype=torch.bool), diagonal=skv - sq + 1)


class _TorchOnCpu(types.ModuleType):
    """`torch` as seen by a megatron module that writes `device='cuda'` literals (optimizer,
    grad clipping, grad buffers): everything is torch, except that its tensor factories build
    CUDA-placed tensors on the CPU. Replacing the module's `torch` name reaches every literal
    in it without touching torch for anyone else."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def _factory_on_cpu(factory: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def build(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        if device is not None and torch.device(device).type == "cuda":
            device = "cpu"
        return factory(*args, device=device, **kwargs)

    return build


_TORCH_ON_CPU = _TorchOnCpu("torch")
for _name in ("tensor", "zeros", "ones", "empty", "full"):
    setattr(_TORCH_ON_CPU, _name, _factory_on_cpu(getattr(torch, _name)))

_tensor_type = torch.Tensor.type


# The only callers that see the CUDA name: megatron's optimizer package compares `t.type()`
# with 'torch.cuda.*Tensor' strings. Every other caller (ours, torch's, a user's) keeps torch's
# own answer, so the patch does not change `Tensor.type` for the rest of the process.
_CUDA_NAME_CALLERS = "megatron.core.optimizer"


def _cuda_type_name(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """`t.type()` of a CPU tensor, asked by megatron's optimizer code, as the CUDA name its
    dtype checks compare with ('torch.cuda.BFloat16Tensor' ...); torch's own answer otherwise
    (with arguments it is a cast)."""
    name = _tensor_type(self, *args, **kwargs)
    if args or kwargs or self.device.type != "cpu":
        return name
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if not caller.startswith(_CUDA_NAME_CALLERS):
        return name
    return name.replace("torch.", "torch.cuda.", 1)


# Without CUDA there is no Transformer Engine or Apex, so megatron's DistributedOptimizer runs
# torch's AdamW, whose per-parameter `step` tensors its checkpoint code mishandles (on GPUs the
# fused Adam of TE / Apex is required: training/optim.py). The originals, for the three rows
# below that wrap them.
_DIST_OPT = "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer"
_originals: dict[str, Callable[..., Any]] = {}


def _adam_state_at_start(self: Any, *args: Any, **kwargs: Any) -> None:
    """DistributedOptimizer.__init__, then the state torch's AdamW would create at its first step
    (step 0, zero moments: numerically the same): megatron's `state_dict` asserts that every
    parameter has one `step`, so a save before the first step would fail."""
    _originals[f"{_DIST_OPT}.__init__"](self, *args, **kwargs)
    inner = self.optimizer
    if isinstance(inner, torch.optim.Adam):
        for group in inner.param_groups:
            for param in group["params"]:
                inner.state[param] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
                }


def _set_states_without_step(self: Any, model_param: Any, tensors: dict) -> None:
    """Loading copies every state tensor, `step` too, but the step lives in the param groups:
    fully_reshardable state has none (KeyError) and dp_reshardable hands back the optimizer's own
    pre-load step, which would restart the bias correction. None entries are skipped."""
    _originals[f"{_DIST_OPT}._set_main_param_and_optimizer_states"](
        self, model_param, {**tensors, "step": None}
    )


def _load_state_dict_unshared(self: Any, state_dict: dict) -> None:
    """`load_state_dict` gives every parameter ONE shared step tensor, which AdamW then
    increments once per parameter per step (the bias correction runs away): unshare it."""
    _originals[f"{_DIST_OPT}.load_state_dict"](self, state_dict)
    for state in self.optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()


_TP1 = (
    "import os, torch.distributed as d;"
    "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=os.environ.get('CANARY_PORT','29533'));"
    "d.init_process_group('gloo', rank=0, world_size=1);"
    "from megatron.core import parallel_state as ps; ps.initialize_model_parallel(1);"
)

# A DistributedOptimizer over torch's AdamW for a 2-parameter model, in a world of one.
_DIST_OPT_CANARY = _TP1 + (
    "import torch; from megatron.core.distributed import DistributedDataParallel as D,"
    " DistributedDataParallelConfig as DC; from megatron.core.transformer import"
    " TransformerConfig as C; from megatron.core.optimizer import OptimizerConfig as OC,"
    " get_megatron_optimizer as g;"
    "m = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False));"
    "ddp = D(C(num_layers=1, hidden_size=4, num_attention_heads=1),"
    " DC(use_distributed_optimizer=True), m);"
    "opt = g(OC(optimizer='adam', lr=1e-3, use_distributed_optimizer=True), [ddp]);"
    "dist_opt = opt.chained_optimizers[0] if hasattr(opt, 'chained_optimizers') else opt;"
    "inner = dist_opt.optimizer;"
)

PATCHES: tuple[Patch, ...] = (
    Patch(
        "torch.cuda",
        "current_device",
        _cpu_device,
        site="device=torch.cuda.current_device() in rotary_pos_embedding, tensor_parallel, ddp",
        canary=_TP1 + "from megatron.core.models.common.embeddings.rotary_pos_embedding import "
        "RotaryEmbedding; RotaryEmbedding(16, 1.0)(8)",
    ),
    Patch(
        "torch.cuda",
        "get_rng_state",
        _get_rng_state,
        site="tensor_parallel.random.CudaRNGStatesTracker.add (model-parallel RNG streams)",
        canary="from megatron.core.tensor_parallel.random import CudaRNGStatesTracker as T;"
        "T().add('x', 1)",
    ),
    Patch(
        "torch.cuda",
        "manual_seed",
        torch.manual_seed,
        site="tensor_parallel.random.model_parallel_cuda_manual_seed seeds per-TP-rank streams",
        # Unpatched it is queued for a CUDA init that never comes: every stream is the same.
        canary="import torch; from megatron.core.tensor_parallel.random import "
        "CudaRNGStatesTracker as T; t = T(); t.add('a', 1); t.add('b', 2);"
        "assert not torch.equal(t.get_states()['a'], t.get_states()['b']), 'streams identical'",
        expect="streams identical",
    ),
    Patch(
        "megatron.core.tensor_parallel.random",
        "_get_cuda_rng_state",
        _get_rng_state,
        site="tensor_parallel.random.CudaRNGStatesTracker.fork (dropout under TP)",
        canary="from megatron.core.tensor_parallel import random as r; r._get_cuda_rng_state()",
    ),
    Patch(
        "megatron.core.tensor_parallel.random",
        "_set_cuda_rng_state",
        _set_rng_state,
        site="tensor_parallel.random.CudaRNGStatesTracker.fork (restores the stream)",
        # Unpatched, the set is queued for a CUDA init that never comes: a silent no-op.
        canary="import torch; from megatron.core.tensor_parallel import random as r;"
        "s = torch.get_rng_state(); torch.rand(3); r._set_cuda_rng_state(s);"
        "assert torch.equal(torch.get_rng_state(), s), 'rng state not restored'",
        expect="rng state not restored",
    ),
    Patch(
        "megatron.core.transformer.utils",
        "get_default_causal_mask",
        _causal_mask,
        site='transformer.utils.get_default_causal_mask builds its mask with device="cuda"',
        canary="from megatron.core.transformer.utils import get_default_causal_mask as m;"
        "m.cache_clear() if hasattr(m, 'cache_clear') else None; m(4)",
    ),
    Patch(
        "megatron.core.fusions.fused_softmax",
        "get_default_causal_mask",
        _causal_mask,
        site="fusions.fused_softmax imports get_default_causal_mask by name (same cuda mask)",
        canary="from megatron.core.fusions.fused_softmax import get_default_causal_mask as m; m(4)",
    ),
    Patch(
        "torch.cuda",
        "Event",
        NullEvent,
        site="torch.cuda.Event in inference engines and DDP/optimizer timers",
        canary="import torch; torch.cuda.Event(enable_timing=True).record()",
        expect="NVIDIA driver|not compiled with CUDA|torch.cuda.Stream",
    ),
    Patch(
        "torch.cuda",
        "synchronize",
        lambda *a, **k: None,
        site="torch.cuda.synchronize in optimizer, checkpointing and inference",
        canary="import torch; torch.cuda.synchronize()",
    ),
    Patch(
        "torch.cuda",
        "current_stream",
        lambda *a, **k: contextlib.nullcontext(),
        site="torch.cuda.current_stream in DDP param and grad buffers",
        canary="import torch; torch.cuda.current_stream()",
    ),
    Patch(
        "torch.Tensor",
        "type",
        _cuda_type_name,
        site="param.type() == 'torch.cuda.*Tensor' checks in Float16Optimizer, "
        "DistributedOptimizer and clip_grads (a CPU bf16 param would be rejected); the CUDA "
        "name is given to megatron.core.optimizer callers only",
        # Asked as megatron's optimizer module asks (its globals), not from this script.
        canary="import torch, types; t = torch.zeros(1, dtype=torch.bfloat16);"
        "g = {'__name__': 'megatron.core.optimizer.optimizer'};"
        "name = types.FunctionType((lambda x: x.type()).__code__, g)(t);"
        "assert name == 'torch.cuda.BFloat16Tensor', 'cpu tensor type is ' + name",
        expect="cpu tensor type is",
    ),
    Patch(
        "megatron.core.optimizer.optimizer",
        "torch",
        _TORCH_ON_CPU,
        site="optimizer.MixedPrecisionOptimizer.__init__ / FP32Optimizer: device='cuda' scalars",
        canary=_TP1 + "import torch; from megatron.core.optimizer.optimizer import FP32Optimizer;"
        "from megatron.core.optimizer import OptimizerConfig as C;"
        "FP32Optimizer(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0), C(), None)",
    ),
    Patch(
        "megatron.core.optimizer.clip_grads",
        "torch",
        _TORCH_ON_CPU,
        site="clip_grads.get_grad_norm_fp32 / clip_grad_by_total_norm_fp32: device='cuda' buffers",
        canary=_TP1 + "import torch; from megatron.core.optimizer.clip_grads import "
        "get_grad_norm_fp32 as n; n([torch.ones(2)])",
    ),
    Patch(
        "megatron.core.optimizer.distrib_optimizer",
        "torch",
        _TORCH_ON_CPU,
        site="distrib_optimizer.DistributedOptimizer: device=torch.cuda.current_device() "
        "buffers when sharding or gathering optimizer state for checkpoints",
        canary="from megatron.core.optimizer import distrib_optimizer as d;"
        "d.torch.zeros(1, device='cuda')",
    ),
    Patch(
        "megatron.core.pipeline_parallel.schedules",
        "torch",
        _TORCH_ON_CPU,
        site="schedules.forward_backward_*: total_num_tokens counter made with device='cuda'",
        # One training step of a 1-parameter model through megatron's schedule.
        canary=_TP1 + "import torch; from megatron.core.enums import ModelType;"
        "from megatron.core.pipeline_parallel import get_forward_backward_func as fb;"
        "from megatron.core.transformer import TransformerConfig as C;"
        "m = torch.nn.Linear(1, 1); m.config = C(num_layers=1, hidden_size=4,"
        " num_attention_heads=1); m.model_type = ModelType.encoder_or_decoder;"
        "m.set_input_tensor = lambda t: None;"
        "fb()(forward_step_func=lambda it, mod: (mod(torch.ones(1, 1)),"
        " lambda o: (o.sum(), torch.tensor(1), {})), data_iterator=iter([None]), model=[m],"
        " num_microbatches=1, seq_length=1, micro_batch_size=1, forward_only=False)",
    ),
    Patch(
        "megatron.core.utils",
        "torch",
        _TORCH_ON_CPU,
        site="utils.local_multi_tensor_l2_norm (grad norm without apex/TE): device='cuda' result",
        canary="import torch; from megatron.core.utils import local_multi_tensor_l2_norm as n;"
        "n(1, None, [[torch.ones(2)]], False)",
    ),
    Patch(
        _DIST_OPT,
        "__init__",
        _adam_state_at_start,
        site="DistributedOptimizer.state_dict asserts one AdamW step per parameter: a save "
        "before the first step fails with torch's AdamW",
        canary=_DIST_OPT_CANARY + "opt.state_dict()",
        expect="AssertionError",
    ),
    Patch(
        _DIST_OPT,
        "_set_main_param_and_optimizer_states",
        _set_states_without_step,
        site="DistributedOptimizer._set_main_param_and_optimizer_states copies `step` into "
        "torch AdamW's state on load (a dp_reshardable resume restarts at step 0)",
        # No autograd: in fp32 the main params are views of the model's leaves (as on load).
        canary=_DIST_OPT_CANARY + "torch.set_grad_enabled(False);"
        "p = next(iter(inner.state)); z = torch.zeros_like(p);"
        "model_param = next(iter(dist_opt.model_param_group_index_map));"
        "dist_opt._set_main_param_and_optimizer_states(model_param, {'param': z, 'exp_avg': z,"
        " 'exp_avg_sq': z, 'step': torch.tensor(7.0)});"
        "assert float(inner.state[p]['step']) == 0.0, 'step overwritten'",
        expect="step overwritten",
    ),
    Patch(
        _DIST_OPT,
        "load_state_dict",
        _load_state_dict_unshared,
        site="DistributedOptimizer.load_state_dict gives every parameter one shared AdamW step "
        "tensor (incremented once per parameter per step)",
        canary=_DIST_OPT_CANARY + "dist_opt.load_state_dict(dist_opt.state_dict());"
        "steps = [s['step'] for s in inner.state.values()];"
        "assert len({id(t) for t in steps}) == len(steps) == 2, 'step shared'",
        expect="step shared",
    ),
)


def apply(without: str | None = None) -> bool:
    """Redirect megatron-core's CUDA-only sites to the CPU when CUDA is absent.

    ``without`` names one patch (``module.attr``) to leave out: the canaries use it to show that
    site still fails while everything around it works. Returns whether patches are in force.
    """
    global _applied
    if torch.cuda.is_available():
        return False
    if not _applied:
        # Torch's AdamW is what runs here, by design: megatron's warning about it is noise.
        warnings.filterwarnings("ignore", "Transformer Engine and Apex are not installed")
        apply_patches(PATCHES, _originals, without)
        _applied = True
    return True


def is_applied() -> bool:
    return _applied
