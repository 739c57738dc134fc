"""Megatron DDP, optimizer (AdamW, distributed by default) and LR schedule from the config, and
the schedule's restore on resume."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from megatron_chimed.config.schema import OptimConfig, ParallelConfig
from megatron_chimed.model import unwrap
from megatron_chimed.model.builder import DTYPES

log = logging.getLogger("megatron_chimed.train")


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
        # Both overlaps run on the CPU too (gloo, with platform/cpu_compat.py's stream stand-ins;
        # tests/training/test_perf_settings.py trains with them), so the config is taken as is.
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=overlap_param_gather(parallel),
        align_param_gather=parallel.align_param_gather,
        bucket_size=parallel.bucket_size,
    )
    ddp = DistributedDataParallel(config, ddp_config, model)
    config.no_sync_func = ddp.no_sync
    return ddp


def overlap_param_gather(parallel: ParallelConfig) -> bool:
    """megatron asserts overlap_param_gather only with the distributed optimizer; without one
    there is no param all-gather to overlap, so the (default-on) setting is moot."""
    return parallel.overlap_param_gather and parallel.use_distributed_optimizer


def pauses_param_gather(ddp: torch.nn.Module) -> bool:
    """Whether `ddp` gathers params lazily in forward pre-hooks (overlap_param_gather with the
    distributed optimizer: Megatron-LM's training.py `should_disable_forward_pre_hook`)."""
    ddp_config = getattr(ddp, "ddp_config", None)
    return bool(
        ddp_config is not None
        and ddp_config.use_distributed_optimizer
        and ddp_config.overlap_param_gather
    )


@contextlib.contextmanager
def params_gathered(ddp: torch.nn.Module) -> Iterator[None]:
    """Validation and checkpoint saves need every rank's full, updated params: with
    overlap_param_gather the all-gather after an optimizer step only finishes in the next
    training forward's pre-hooks. As Megatron-LM's training.py does around evaluate and
    save_checkpoint: disable the hooks (which syncs the params now), re-enable them after."""
    if not pauses_param_gather(ddp):
        yield
        return
    ddp.disable_forward_pre_hook()
    try:
        yield
    finally:
        ddp.enable_forward_pre_hook()


def build_optimizer(
    ddp: torch.nn.Module,
    optim: OptimConfig,
    parallel: ParallelConfig,
    precision: str,
    train_iters: int,
):
    """(megatron optimizer, OptimizerParamScheduler) for a DDP-wrapped model."""
    from megatron.core import optimizer as megatron_optimizer
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    if torch.cuda.is_available() and megatron_optimizer.USING_PYTORCH_OPTIMIZER:
        # megatron falls back to torch's AdamW without TE or Apex: slower, and its checkpoint
        # code needs the patches of platform/cpu_compat.py, which never run on a GPU.
        raise RuntimeError(
            "no fused Adam: megatron-core found neither Transformer Engine nor Apex, and would "
            "train with torch's AdamW. Install Transformer Engine (`pip install .[gpu]`) or Apex"
        )

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
            # The optimizer skips its own param all-gather when DDP's forward hooks do it
            # (Megatron-LM passes the same flag to both configs).
            overlap_param_gather=overlap_param_gather(parallel),
        ),
        [ddp],
    )
    unwrap(ddp).config.grad_scale_func = optimizer.scale_loss
    return optimizer, build_scheduler(optimizer, optim, train_iters)


def build_scheduler(optimizer: Any, optim: OptimConfig, train_iters: int) -> Any:
    """megatron's OptimizerParamScheduler: warm-up, then `optim.decay_style` over
    `optim.decay_iters` (default: `train_iters`) down to lr x min_lr_ratio."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    min_lr = optim.lr * optim.min_lr_ratio
    decay_iters = optim.decay_iters or train_iters
    return OptimizerParamScheduler(
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


# The scheduler's saved fields that this run's config decides, and the keys behind each.
SCHEDULE_KEYS = {
    "max_lr": "optim.lr",
    "min_lr": "optim.lr, optim.min_lr_ratio, optim.decay_style",
    "lr_warmup_steps": "optim.warmup_iters",
    "lr_decay_steps": "training.train_iters or optim.decay_iters",
    "lr_decay_style": "optim.decay_style",
    "start_wd": "optim.weight_decay",
    "end_wd": "optim.weight_decay",
    "wd_incr_steps": "training.train_iters or optim.decay_iters",
}


def restore_schedule(scheduler: Any, saved: dict[str, Any]) -> list[str]:
    """Continue at the checkpoint's step count on this run's schedule; return what changed.

    megatron's `load_state_dict` keeps the checkpoint's schedule by default: a resume with a
    longer `training.train_iters` would still decay to the minimum at the old end and stay
    there. The config is the source of truth, as for every other setting of a resumed run; each
    change is said once in the log, naming the key behind it."""
    changes = [
        f"{name} {saved[name]} -> {getattr(scheduler, name)} ({key})"
        for name, key in SCHEDULE_KEYS.items()
        if name in saved and saved[name] != getattr(scheduler, name)
    ]
    override = scheduler.override_opt_param_scheduler
    scheduler.override_opt_param_scheduler = True  # this run's values, the saved step count
    try:
        scheduler.load_state_dict(saved)
    finally:
        scheduler.override_opt_param_scheduler = override
    if changes and (not dist.is_initialized() or dist.get_rank() == 0):
        log.info("resuming on this run's LR schedule, not the checkpoint's: %s", "; ".join(changes))
    return changes
