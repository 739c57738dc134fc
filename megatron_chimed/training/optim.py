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
    from megatron.core import optimizer as megatron_optimizer
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

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
        ),
        [ddp],
    )
    unwrap(ddp).config.grad_scale_func = optimizer.scale_loss
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
