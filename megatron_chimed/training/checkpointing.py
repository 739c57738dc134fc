"""Full training state on disk (checkpoint/layout.py), resume, and weights-only starts.

A training checkpoint `ROOT/iter_N/` holds, in one megatron dist_checkpointing (torch_dist)
save: "model" (the model's sharded state dict, the key the converter uses too), "optimizer"
(distributed optimizer state in `checkpoint.optimizer_format`, see below) and "rng" (tensors per
TP rank, training/rng_state.py); `chimed.json` holds the scheduler, iteration, consumed samples,
the resolved config and the optimizer format with the TP and DP sizes it was saved at, and
`manifest.json` every file's size and CRC32 (checkpoint/manifest.py). `latest` is moved only
after all ranks finished writing, so a job killed mid-save resumes from the previous complete
checkpoint; a save checks the free space first and removes its folder when it fails
(training/save_space.py). A load unpickles nothing that could run code
(checkpoint/safe_load.py); which checkpoint it reads is checkpoint/verified.py's choice.

Optimizer formats (megatron-core's `distrib_optim_sharding_type`):
- `dp_reshardable` (default, Megatron-LM's for large runs): each rank writes and reads only its
  own 1/DP shard of the optimizer buckets, in place; saves run fully parallel over the DP group,
  and so do loads on GPUs (model weights read once per DP group and broadcast). Resumes at
  another DP size: bucket tensors are stored unpadded, at offsets that do not depend on DP (as
  long as the bucket split does not: DDP's default bucket size is constant up to DP=40). Not at
  another TP.
- `fully_reshardable`: model-space state, gathered to DP rank 0 to save; on load every rank
  allocates and reads its whole TP shard's state (12 bytes a parameter) and keeps 1/DP of it.
  Resumes at any TP and DP size. What checkpoints written before the format was recorded use.

Two ways in: `resume` (everything, automatic from run_dir/checkpoints/latest) and
checkpoint/weights.load_model_weights (model only, fresh optimizer: a converted HF checkpoint
or a previous stage's output), which the loop uses for `checkpoint.load`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_chimed.checkpoint import CheckpointError, interop, layout, manifest, safe_load
from megatron_chimed.config.schema import check_optimizer_format
from megatron_chimed.training import resume_checks, rng_state, save_space
from megatron_chimed.training.optim import restore_schedule

log = logging.getLogger("megatron_chimed.train")

# What a checkpoint without an `optimizer_format` in chimed.json was written in.
LEGACY_OPTIMIZER_FORMAT = "fully_reshardable"

# The metadata megatron's DistributedOptimizer.sharded_state_dict takes, per format. The
# mem-efficient fully_reshardable gathers over gloo to DP rank 0 only: no copy of the whole state
# on every rank's GPU at save, and no device='cuda' transfer on the CPU.
_SHARDING = {
    "dp_reshardable": {"distrib_optim_sharding_type": "dp_reshardable"},
    "fully_reshardable": {
        "distrib_optim_sharding_type": "fully_reshardable",
        "distrib_optim_fully_reshardable_mem_efficient": True,
    },
}


def _model_state(ddp: torch.nn.Module) -> dict:
    # The inner module's: the DDP wrapper's own would add a `module.` prefix to every key.
    return ddp.module.sharded_state_dict()


def _sharded_state(
    ddp: torch.nn.Module, optimizer: Any, optimizer_format: str, is_loading: bool, rng: Any
) -> dict:
    model_sd = _model_state(ddp)
    state = {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata=dict(_SHARDING[optimizer_format])
        ),
    }
    if rng is not None:
        state["rng"] = rng
    return state


def _dp_group() -> dist.ProcessGroup:
    # The group the distributed optimizer shards over: the ranks holding replicas of one model
    # shard. Megatron-LM's --ckpt-fully-parallel-save/load default ('dp') uses the same.
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def _save_strategy(optimizer_format: str) -> Any:
    """Fully parallel save for dp_reshardable: every replicated tensor (the model weights, the
    per-bucket metadata) is written by one rank of the DP group, chosen to balance the bytes, and
    each rank writes its own optimizer shard; only metadata crosses ranks. fully_reshardable
    keeps megatron's default (its state is gathered to DP rank 0, which writes all of it)."""
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelSaveStrategyWrapper,
    )
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    if optimizer_format != "dp_reshardable":
        return None
    return FullyParallelSaveStrategyWrapper(TorchDistSaveShardedStrategy(), _dp_group())


def _load_strategy(optimizer_format: str) -> Any:
    """Fully parallel load for dp_reshardable on GPUs: each tensor shard is read from storage by
    one rank of the DP group and broadcast (CUDA tensors, NCCL DP group) to the others that need
    it, as Megatron-LM's --ckpt-fully-parallel-load; an optimizer shard is needed by its owner
    alone and never leaves it. Without CUDA, megatron's plain load: its one exchange that does
    not stage tensors on a CUDA device, `gather_object`, pickles whole storages (a parameter is
    a view of DDP's buffer) and sends every rank's optimizer shard to all: over 1 GB of host
    memory per rank to load a 15M-parameter model at TP=2 DP=2, where the plain load adds ~6 MB."""
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelLoadStrategyWrapper,
    )
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistLoadShardedStrategy

    if optimizer_format != "dp_reshardable" or not torch.cuda.is_available():
        return None
    return FullyParallelLoadStrategyWrapper(
        TorchDistLoadShardedStrategy(), _dp_group(), exchange_algo="broadcast"
    )


def save(
    root: str | Path,
    iteration: int,
    ddp: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    metadata: dict[str, Any],
    tokenizer_dir: str | Path | None = None,
    optimizer_format: str = "dp_reshardable",
    keep_last: int | None = None,
) -> Path:
    """Write iteration `iteration` under `root` on every rank; move `latest` when complete.
    `optimizer_format`: the run's `checkpoint.optimizer_format`; `keep_last`: its
    `checkpoint.keep_last`, used to make room first when the disk is short."""
    from megatron.core import dist_checkpointing, parallel_state

    fmt = check_optimizer_format(optimizer_format)
    root = Path(root)
    target = layout.iteration_dir(root, iteration)
    rng = rng_state.sharded(rng_state.capture())
    state = _sharded_state(ddp, optimizer, fmt, is_loading=False, rng=rng)
    needed = save_space.estimate(root, state)
    # Every rank has sized `latest` before rank 0 may remove it below (re-saving the iteration
    # `latest` names, after a fallback from a corrupt newer one).
    dist.barrier()
    writes = manifest.WriteLog()
    rank0 = dist.get_rank() == 0
    try:
        if rank0:
            # A folder left by a save that died half-way (latest never named it) is garbage.
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            if tokenizer_dir is not None:
                layout.copy_tokenizer(tokenizer_dir, root / layout.TOKENIZER, overwrite=False)
        dist.barrier()
        make_room = (lambda: prune(root, keep_last - 1, spare=target)) if keep_last else None
        save_space.ensure_room(target, needed, make_room)
        with manifest.record_writes(target, writes):
            dist_checkpointing.save(state, str(target), _save_strategy(fmt))
        metadata = {
            **metadata,
            "kind": "train",
            "iteration": iteration,
            "scheduler": scheduler.state_dict(),
            # What resume needs to read the optimizer back, and to say what it reshards.
            "optimizer_format": fmt,
            "tensor_parallel": parallel_state.get_tensor_model_parallel_world_size(),
            "data_parallel": parallel_state.get_data_parallel_world_size(),
        }
        # Megatron-LM's args (common.pt) and Bridge's run_config.yaml, before the manifest
        # so that it checksums them.
        metadata = interop.write(target, metadata)
        # Every rank's shards are on disk once the manifest's gather returns.
        manifest.write(target, writes, {layout.METADATA: manifest.metadata_bytes(metadata)})
        if rank0:
            layout.write_metadata(target, metadata)
            layout.write_latest(root, iteration)
    except BaseException as err:
        save_space.failed(err, target, needed, writes)
    dist.barrier()
    return target


def prune(root: str | Path, keep_last: int, spare: Path | None = None) -> None:
    """Remove all but the newest `keep_last` complete checkpoints, never `latest` (rank 0
    only). With `spare` (a save making room for that folder): also the folders of saves that
    never completed."""
    latest = layout.read_latest(root)
    folders = sorted(Path(root).glob("iter_*"))
    done = [p for p in folders if (p / layout.METADATA).is_file()]
    old = done[: max(len(done) - keep_last, 0)]
    if spare is not None:
        old += [p for p in folders if p not in done and p != spare]
    for folder in old:
        if folder != latest:
            shutil.rmtree(folder, ignore_errors=True)


def saved_optimizer_format(ckpt_dir: Path, metadata: dict[str, Any]) -> str:
    """The format a checkpoint's optimizer state is in, from its chimed.json."""
    fmt = metadata.get("optimizer_format", LEGACY_OPTIMIZER_FORMAT)
    return check_optimizer_format(fmt, f"optimizer_format in {ckpt_dir / layout.METADATA}")


def _bucket_sizes(ckpt_dir: Path, optimizer: Any) -> tuple[list[int], list[int]]:
    """(this run's, the checkpoint's) unpadded optimizer bucket sizes for this rank's TP shard."""
    from megatron.core import dist_checkpointing

    parts = getattr(optimizer, "chained_optimizers", [optimizer])
    ours = [
        b.numel_unpadded for p in parts for buf in getattr(p, "buffers", []) for b in buf.buckets
    ]
    groups = {f".dp_group_idx_{p.data_parallel_group_idx}." for p in parts if hasattr(p, "buffers")}
    stored = [
        meta.global_shape[0]
        for key, meta in dist_checkpointing.load_tensors_metadata(str(ckpt_dir)).items()
        if key.endswith(".param") and ".bucket_idx_" in key and any(g in key for g in groups)
    ]
    return sorted(ours), sorted(stored)


def _check_resharding(ckpt_dir: Path, metadata: dict[str, Any], fmt: str, optimizer: Any) -> None:
    """Refuse what the format cannot do, and say in the log what a DP change does."""
    from megatron.core import parallel_state

    tp, dp = (
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_data_parallel_world_size(),
    )
    saved_tp, saved_dp = metadata.get("tensor_parallel"), metadata.get("data_parallel")
    convert = (
        f"resume it at TP={saved_tp} DP={saved_dp} with checkpoint.optimizer_format="
        "fully_reshardable: its next checkpoint loads at any TP and DP"
    )
    if fmt == "dp_reshardable" and saved_tp not in (None, tp):
        raise ValueError(
            f"{ckpt_dir}: its optimizer state is dp_reshardable, saved at TP={saved_tp}; it "
            f"cannot resume at TP={tp}: {convert}"
        )
    if saved_dp in (None, dp):
        return
    if fmt == "dp_reshardable":
        # The bucket split depends on DP only through DDP's bucket size (max(40M, 1M x DP)
        # elements with overlapped grad reduce): past DP=40 the buckets move.
        ours, stored = _bucket_sizes(ckpt_dir, optimizer)
        if ours != stored:
            raise ValueError(
                f"{ckpt_dir}: its dp_reshardable optimizer buckets (saved at DP={saved_dp}) hold "
                f"{stored} elements, this run's at DP={dp} {ours}: {convert}"
            )
    if dist.get_rank() == 0:
        how = (
            "bucket-space shards read back at the new DP offsets (the unpadded bucket layout "
            "is the same)"
            if fmt == "dp_reshardable"
            else "every rank reads the whole model-space state and keeps its own 1/DP"
        )
        log.info("resuming %s (%s optimizer state, saved at DP=%s) at DP=%s: %s",
                 ckpt_dir, fmt, saved_dp, dp, how)  # fmt: skip


@torch.no_grad()  # the loads write into fp32 main params that are views of the model's leaves
def resume(ckpt_dir: Path, ddp: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict:
    """Load everything from a training checkpoint; return its chimed.json metadata. Nothing
    stored in it is unpickled beyond plain data and tensors (checkpoint/safe_load.py)."""
    from megatron.core import dist_checkpointing

    metadata = layout.read_metadata(ckpt_dir)
    if metadata.get("kind") != "train":
        raise ValueError(
            f"{ckpt_dir}: a {metadata.get('kind')!r} checkpoint has no optimizer state; "
            "start from it with checkpoint.load instead"
        )
    index = safe_load.read_index(ckpt_dir)  # before megatron unpickles the same bytes
    safe_load.check_files(ckpt_dir, index)
    # The checkpoint's own format, whatever this run saves in: old checkpoints resume as written.
    fmt = saved_optimizer_format(ckpt_dir, metadata)
    _check_resharding(ckpt_dir, metadata, fmt, optimizer)
    kind, rng = rng_state.load_request(index, ckpt_dir)
    request = _sharded_state(ddp, optimizer, fmt, is_loading=True, rng=rng)
    allow = rng_state.LEGACY_GLOBALS if kind == "legacy" else ()
    refused = None
    try:
        with safe_load.no_pickled_code(ckpt_dir, allow):
            state = dist_checkpointing.load(request, str(ckpt_dir), _load_strategy(fmt))
        safe_load.check_extra_state(ckpt_dir, state["model"])
    except CheckpointError as err:
        refused = str(err)
    # Each rank reads its own items: one refusing must stop all, not leave them in a collective.
    found: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(found, refused)
    if any(found):
        raise CheckpointError(next(f for f in found if f))
    ddp.module.load_state_dict(state["model"])
    resume_checks.adopt_param_groups(state["optimizer"], optimizer)  # this run's LR schedule
    optimizer.load_state_dict(state["optimizer"])
    restore_schedule(scheduler, metadata["scheduler"])
    if kind == "tensors":
        rng_state.restore(state["rng"])
    elif kind == "legacy":
        rng_state.restore_legacy(state["rng"])
    return metadata
