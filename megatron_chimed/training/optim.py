"""Megatron DDP, optimizer (AdamW, distributed by default) and LR schedule from the config."""

from __future__ import annotations

import torch

from megatron_chimed.config.schema import OptimConfig, ParallelConfig
from megatron_chimed.model import unwrap
from megatron_chimed.model.builder import DTYPES


def wrap_ddp(model: torch.nn.Module, parallel: ParallelConfig) -> torch.nn.Module:
    """Megatron DDP with fp32 grad buffers; the loop's loss is per token (see loss.py)."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )

    config = unwrap(model).config
    # megatron's schedule reads its hooks from the model's TransformerConfig (Megatron-LM's
    # training.py sets the same three): the grad reduce + per-token division after the last
    # micro-batch, DDP's no_sync between micro-batches, and the loss scale (build_optimizer).
    config.finalize_model_grads_func = finalize_model_grads
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        # Overlap needs CUDA streams; on the CPU it would only add bookkeeping.
        overlap_grad_reduce=torch.cuda.is_available(),
    )
    ddp = DistributedDataParallel(config, ddp_config, model)
    config.no_sync_func = ddp.no_sync
    return ddp


def build_optimizer(
    ddp: torch.nn.Module,
    optim: OptimConfig,
    parallel: ParallelConfig,
    precision: str,
    train_iters: int,
):
    """(megatron optimizer, OptimizerParamScheduler) for a DDP-wrapped model."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",  # decoupled weight decay: AdamW, as the paper
            lr=optim.lr,
            min_lr=optim.lr * optim.min_lr_ratio,
            weight_decay=optim.weight_decay,
            adam_beta1=optim.adam_beta1,
            adam_beta2=optim.adam_beta2,
            adam_eps=optim.adam_eps,
            clip_grad=optim.clip_grad,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            params_dtype=DTYPES[precision],
            use_distributed_optimizer=parallel.use_distributed_optimizer,
        ),
        [ddp],
    )
    unwrap(ddp).config.grad_scale_func = optimizer.scale_loss
    for part in getattr(optimizer, "chained_optimizers", [optimizer]):
        _fix_torch_adam_fallback(part)
    min_lr = optim.lr * optim.min_lr_ratio
    decay_iters = optim.decay_iters or train_iters
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if optim.warmup_iters else optim.lr,
        max_lr=optim.lr,
        min_lr=optim.lr if optim.decay_style == "constant" else min_lr,
        lr_warmup_steps=optim.warmup_iters,
        lr_decay_steps=max(decay_iters, optim.warmup_iters + 1),
        lr_decay_style=optim.decay_style,
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=decay_iters,
        wd_incr_style="constant",
    )
    return optimizer, scheduler


def _fix_torch_adam_fallback(optimizer) -> None:
    """Make megatron's DistributedOptimizer checkpoint a plain `torch.optim.AdamW` correctly.

    Without Transformer Engine or Apex (the CPU, or a GPU box without them) megatron falls back
    to torch's AdamW, whose per-parameter `step` tensors its checkpoint code mishandles:
    - `state_dict()` asserts that all states share one step, which fails on a fresh optimizer
      (no state yet): we create the state torch would create at the first step (step 0, zero
      moments; numerically the same);
    - loading copies every state tensor from the checkpoint, but `step` lives in the param
      groups: fully_reshardable state has none (KeyError), dp_reshardable hands back the
      optimizer's own pre-load step (never saved), which would reset the count to 0 and
      restart the bias correction: we drop it, so the param groups' step is the one loaded;
    - `load_state_dict` gives all parameters ONE shared step tensor, which AdamW then
      increments once per parameter per step (the bias correction runs away): we unshare it.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    inner = getattr(optimizer, "optimizer", None)
    if not isinstance(optimizer, DistributedOptimizer) or not isinstance(inner, torch.optim.Adam):
        return
    for group in inner.param_groups:
        for param in group["params"]:
            inner.state[param] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
            }
    set_states, load_state_dict = (
        optimizer._set_main_param_and_optimizer_states,
        optimizer.load_state_dict,
    )

    def set_states_without_step(model_param, tensors: dict) -> None:
        set_states(model_param, {**tensors, "step": None})  # None entries are skipped

    def load_state_dict_unshared(state_dict: dict) -> None:
        load_state_dict(state_dict)
        for state in inner.state.values():
            state["step"] = state["step"].clone()

    optimizer._set_main_param_and_optimizer_states = set_states_without_step
    optimizer.load_state_dict = load_state_dict_unshared
