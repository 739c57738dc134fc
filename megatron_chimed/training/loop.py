"""The training loop every stage shares (CPT, SFT, RM, RS): see training/stage.py to plug in.

One iteration = one global batch: megatron's forward-backward function runs
global_batch / (micro_batch x DP) micro-batches of the stage's `forward_step` with gradient
accumulation, megatron DDP reduces the gradients, the (distributed) optimizer clips and steps,
the scheduler moves the LR. Around it: resume or weights-only start, periodic validation,
logging, checkpoints every `checkpoint.save_interval` and at the end, and preemption.

Data order is a function of the number of samples consumed: global batch k is samples
[k x GB, (k+1) x GB) of the train dataset, split among DP ranks (as Megatron-LM's
MegatronPretrainingSampler), so a resume at any DP size continues with the same samples.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from megatron_chimed.checkpoint import layout, verified
from megatron_chimed.config.schema import RunConfig, TrainingConfig
from megatron_chimed.model.userbuffers import initialize_userbuffers
from megatron_chimed.platform import compute_device, seed_everything
from megatron_chimed.training import checkpointing, resume_checks
from megatron_chimed.training.metrics import MetricsLogger, log
from megatron_chimed.training.optim import (
    build_optimizer,
    params_gathered,
    pauses_param_gather,
    wrap_ddp,
)
from megatron_chimed.training.preemption import PreemptionFlag
from megatron_chimed.training.stage import Stage


@dataclass
class TrainState:
    """What `train` leaves behind (tests and callers inspect the model)."""

    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    iteration: int
    consumed_samples: int
    status: str  # "done" | "exit" (exit_after) | "preempted"


class ConsumedSamplesSampler:
    """This DP rank's micro-batches, from global sample `consumed` on, in order."""

    def __init__(self, total: int, consumed: int, micro_batch: int, dp_rank: int, dp_size: int):
        self.total, self.consumed = total, consumed
        self.micro_batch, self.dp_rank, self.dp_size = micro_batch, dp_rank, dp_size

    def __iter__(self) -> Iterator[list[int]]:
        step = self.micro_batch * self.dp_size
        for start in range(self.consumed, self.total - step + 1, step):
            first = start + self.dp_rank * self.micro_batch
            yield list(range(first, first + self.micro_batch))


def _loader(dataset: Any, consumed: int, cfg: TrainingConfig) -> Iterator:
    from megatron.core import parallel_state

    sampler = ConsumedSamplesSampler(
        len(dataset),
        consumed,
        cfg.micro_batch_size,
        parallel_state.get_data_parallel_rank(),
        parallel_state.get_data_parallel_world_size(),
    )
    workers = cfg.dataloader_workers
    return iter(
        torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            # Page-locked batches: the stages' non_blocking copies to the GPU then overlap
            # with its work instead of staging through pageable memory.
            pin_memory=torch.cuda.is_available(),
        )
    )


def _reduce_reports(reports: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Sum each name's [sum, count] over micro-batches and DP ranks.

    One all-reduce of a [names, 2] tensor on the compute device: megatron's DP group is NCCL on
    GPUs, which takes CUDA tensors only. Names are sorted so every rank packs the same rows."""
    from megatron.core import parallel_state

    device = compute_device()
    names = sorted({name for report in reports for name in report})
    totals = torch.stack(
        [
            torch.stack([r[name].detach().to(device, torch.float64) for r in reports]).sum(0)
            for name in names
        ]
    )
    dist.all_reduce(
        totals, group=parallel_state.get_data_parallel_group(with_context_parallel=True)
    )
    return dict(zip(names, totals))


def _averages(totals: dict[str, torch.Tensor]) -> dict[str, float]:
    # One device -> host copy for every name (each .item() would be a sync of its own).
    rows = torch.stack(list(totals.values())).tolist() if totals else []
    return {
        name.replace(" ", "_"): total / max(count, 1) for name, (total, count) in zip(totals, rows)
    }


def _total_samples(cfg: TrainingConfig) -> tuple[int, int, int]:
    gb = cfg.global_batch_size
    evals = cfg.train_iters // cfg.eval_interval + 1 if cfg.eval_interval else 0
    return cfg.train_iters * gb, evals * cfg.eval_iters * gb, cfg.eval_iters * gb


def train(cfg: RunConfig, stage: Stage, tokenizer_dir: str | Path | None = None) -> TrainState:
    """Run (or resume) `stage` as configured by the RunConfig `cfg`; return the final state."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    # Before anything slow (building a 13B model, loading its weights): a preemption signal
    # that arrives during start-up is then honoured at the first step instead of being lost,
    # and a Ctrl-C ends the start-up at once (training/startup.py).
    preemption = PreemptionFlag()
    # The run as it trains: a stage may derive its schedule from its data (the RM's epochs).
    training, optim = stage.schedule()
    cfg = dataclasses.replace(cfg, training=training, optim=optim)
    # Initial weights depend on cfg.seed only, not on what ran before in this process.
    seed_everything(cfg.seed)
    model_parallel_cuda_manual_seed(cfg.seed)
    t = cfg.training
    dp = parallel_state.get_data_parallel_world_size()
    num_micro = t.num_microbatches(dp)
    # TE's TP-overlap buffers must exist before its layers are built (parallel.tp_comm_overlap).
    initialize_userbuffers(cfg.parallel, cfg.model.hidden_size, t.seq_length, t.micro_batch_size)
    model = stage.build_model()
    ddp = wrap_ddp(model, cfg.parallel)
    optimizer, scheduler = build_optimizer(
        ddp, cfg.optim, cfg.parallel, cfg.precision, t.train_iters
    )

    ckpt_root = Path(cfg.run_dir) / "checkpoints"
    iteration = consumed = 0
    rank0 = dist.get_rank() == 0
    # Checked against their manifests first: a corrupt `latest` falls back to an earlier one.
    on_corrupt = cfg.checkpoint.on_corrupt
    latest = verified.resume_point(ckpt_root, on_corrupt)
    if latest is not None:
        resume_checks.check(latest, layout.read_metadata(latest), cfg)
        state = checkpointing.resume(latest, ddp, optimizer, scheduler)
        iteration, consumed = state["iteration"], state["consumed_samples"]
        if rank0:
            log.info("resumed from iteration %d (consumed %d samples): %s", iteration, consumed,
                     latest)  # fmt: skip
    elif cfg.checkpoint.load:
        stage.load_weights(model, str(verified.load_point(cfg.checkpoint.load, on_corrupt)))
        # The optimizer took its fp32 main params from the weights as built; in bf16/fp16 they
        # are copies, and the first step would write them (random init + update) back over the
        # loaded weights. Megatron-LM's load_checkpoint does the same without optimizer state.
        optimizer.reload_model_params()

    train_ds, valid_ds, _ = stage.datasets(_total_samples(t))
    data = _loader(train_ds, consumed, t)
    metrics = MetricsLogger(cfg.run_dir, rank0, t.tensorboard, total_iters=t.train_iters)
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    stage_name = type(stage).__name__

    def save() -> None:
        with params_gathered(ddp):
            _save()

    def _save() -> None:
        checkpointing.save(
            ckpt_root,
            iteration,
            ddp,
            optimizer,
            scheduler,
            # `model` and `architecture` make every training checkpoint loadable for generation
            # and exportable to HF, exactly as a converted one.
            {
                "consumed_samples": consumed,
                "config": resolved,
                "stage": stage_name,
                "model": resolved["model"],
                "architecture": stage.hf_architecture,
            },
            tokenizer_dir,
            cfg.checkpoint.optimizer_format,
            cfg.checkpoint.keep_last,
        )
        if rank0 and cfg.checkpoint.keep_last:
            checkpointing.prune(ckpt_root, cfg.checkpoint.keep_last)

    # Per step the loop adds to megatron's own work only what stays off the critical path:
    # loss reports stay on the device until a log line needs them (one copy per log interval),
    # the preemption check's all-reduce runs in the background (preemption.py `poll`).
    window: list[dict[str, torch.Tensor]] = []
    window_start, grad_norms = time.perf_counter(), []
    paused = 0.0  # validation and save seconds in this log window: not training time
    status = "done"
    # With overlap_param_gather the forward pre-hooks all-gather the params an optimizer step
    # updated. Before the first step there is nothing to gather (every rank built or loaded
    # the same params), so, as Megatron-LM does, the first iteration runs without the hooks.
    first_step_hooks_off = pauses_param_gather(ddp) and iteration < t.train_iters
    if first_step_hooks_off:
        ddp.disable_forward_pre_hook(param_sync=False)
    preemption.started()  # from here a Ctrl-C checkpoints at the next step
    # On any exit (a failed save, a data error) the background all-reduce of the preemption
    # flag is waited for: a collective left in flight on the host group breaks the next one.
    try:
        while iteration < t.train_iters:
            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            reports = _global_batch(ddp, stage, data, t, num_micro, forward_only=False)
            updated, grad_norm, _ = optimizer.step()
            if first_step_hooks_off:  # the next forward gathers what this step updated
                ddp.enable_forward_pre_hook()
                first_step_hooks_off = False
            if updated:
                scheduler.step(increment=1)
            iteration += 1
            consumed += t.global_batch_size
            window.extend(reports)
            grad_norms.append(grad_norm or 0.0)

            if iteration % t.log_interval == 0 or iteration == t.train_iters:
                now = time.perf_counter()
                elapsed = now - window_start - paused
                steps = len(grad_norms)
                metrics.log(
                    "train",
                    iteration,
                    {
                        **_averages(_reduce_reports(window)),
                        "lr": scheduler.get_lr(optimizer.param_groups[0]),
                        "grad_norm": sum(grad_norms) / steps,
                        "tokens_per_s": steps * t.global_batch_size * t.seq_length / elapsed,
                        "consumed_samples": consumed,
                        "step_s": elapsed / steps,
                    },
                )
                # From `now`: this log line's own cost is loop overhead, counted in the next window.
                window, grad_norms, window_start, paused = [], [], now, 0.0
            if valid_ds is not None and t.eval_interval and iteration % t.eval_interval == 0:
                start = time.perf_counter()
                with params_gathered(ddp):
                    metrics.log("valid", iteration, _evaluate(ddp, stage, valid_ds, t, num_micro))
                paused += time.perf_counter() - start

            stop = preemption.poll()
            if stop or iteration == t.exit_after:
                status = "preempted" if stop else "exit"
                save()
                break
            every = cfg.checkpoint.save_interval  # 0: only at the end
            if (every and iteration % every == 0) or iteration == t.train_iters:
                start = time.perf_counter()
                save()
                paused += time.perf_counter() - start
    finally:
        preemption.drain()
    metrics.close()
    if status == "done":
        stage.after_training(model)
    return TrainState(ddp, optimizer, scheduler, iteration, consumed, status)


def _global_batch(
    ddp: torch.nn.Module,
    stage: Stage,
    data: Iterator,
    t: TrainingConfig,
    num_micro: int,
    forward_only: bool,
) -> list[dict[str, torch.Tensor]]:
    """One global batch through megatron's schedule (gradients accumulate over micro-batches)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(
        forward_step_func=stage.forward_step,
        data_iterator=data,
        model=[ddp],
        num_microbatches=num_micro,
        seq_length=t.seq_length,
        micro_batch_size=t.micro_batch_size,
        forward_only=forward_only,
    )


@torch.no_grad()
def _evaluate(ddp: torch.nn.Module, stage: Stage, dataset: Any, t: TrainingConfig, num_micro: int):
    """The first `eval_iters` global batches of `dataset`: the same ones at every validation."""
    ddp.eval()
    data = _loader(dataset, 0, t)
    reports: list[dict[str, torch.Tensor]] = []
    for _ in range(t.eval_iters):
        reports += _global_batch(ddp, stage, data, t, num_micro, forward_only=True)
    ddp.train()
    return _averages(_reduce_reports(reports))
