"""Full training state on disk (checkpoint/layout.py), resume, and weights-only starts.

A training checkpoint `ROOT/iter_N/` holds, in one megatron dist_checkpointing (torch_dist)
save: "model" (the model's sharded state dict, the key the converter uses too), "optimizer"
(distributed optimizer state in the `fully_reshardable` format, loadable at another DP size)
and "rng" (per TP rank); `chimed.json` holds the scheduler, iteration, consumed samples and
the resolved config. `latest` is moved only after all ranks finished writing, so a job killed
mid-save resumes from the previous complete checkpoint.

Two ways in: `resume` (everything, automatic from run_dir/checkpoints/latest) and
checkpoint/weights.load_model_weights (model only, fresh optimizer: a converted HF checkpoint
or a previous stage's output), which the loop uses for `checkpoint.load`.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_chimed.checkpoint import layout

# fully_reshardable: canonical per-parameter state, so a checkpoint loads at another DP size
# (dp_reshardable resets the step count, fully_sharded_model_space fails at save). The
# mem-efficient variant gathers the state on DP rank 0 only, over gloo: no GPU copy of the
# whole state on every rank, and no device='cuda' transfer on the CPU.
_OPTIMIZER_FORMAT = {
    "distrib_optim_sharding_type": "fully_reshardable",
    "distrib_optim_fully_reshardable_mem_efficient": True,
}


@dataclass
class CheckpointConfig:
    """`conf/checkpoint/*.yaml`. Saves go to `run_dir/checkpoints`."""

    load: str | None = None  # weights-only start (converted HF / previous stage); no resume
    save_interval: int = 1000  # iterations; a checkpoint is also written at the end
    keep_last: int | None = None  # prune older iter_* folders (None: keep all)


def _model_state(ddp: torch.nn.Module) -> dict:
    # The inner module's: the DDP wrapper's own would add a `module.` prefix to every key.
    return ddp.module.sharded_state_dict()


def _rng_state() -> dict:
    from megatron.core import parallel_state, tensor_parallel

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
        "tp_rank": parallel_state.get_tensor_model_parallel_rank(),
    }


def _sharded_rng(rng: dict) -> Any:
    """One object per TP rank; DP replicas hold the same streams (replica_id = DP rank)."""
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(
        "rng_state",
        rng,
        (parallel_state.get_tensor_model_parallel_world_size(),),
        (parallel_state.get_tensor_model_parallel_rank(),),
        replica_id=parallel_state.get_data_parallel_rank(),
    )


def _set_rng_state(rng: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(rng["tracker"])


def _sharded_state(ddp: torch.nn.Module, optimizer: Any, is_loading: bool) -> dict:
    model_sd = _model_state(ddp)
    return {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata=_OPTIMIZER_FORMAT
        ),
        "rng": _sharded_rng(_rng_state()),
    }


def save(
    root: str | Path,
    iteration: int,
    ddp: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    metadata: dict[str, Any],
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write iteration `iteration` under `root` on every rank; move `latest` when complete."""
    from megatron.core import dist_checkpointing

    target = layout.iteration_dir(root, iteration)
    if dist.get_rank() == 0:
        # A folder left by a save that died half-way (latest never named it) is garbage.
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        if tokenizer_dir is not None:
            _copy_tokenizer(Path(tokenizer_dir), Path(root) / layout.TOKENIZER)
    dist.barrier()
    dist_checkpointing.save(_sharded_state(ddp, optimizer, is_loading=False), str(target))
    dist.barrier()  # every rank's shards are on disk before the pointer moves
    if dist.get_rank() == 0:
        layout.write_metadata(
            target,
            {
                **metadata,
                "kind": "train",
                "iteration": iteration,
                "scheduler": scheduler.state_dict(),
            },
        )
        layout.write_latest(root, iteration)
    dist.barrier()
    return target


def prune(root: str | Path, keep_last: int) -> None:
    """Remove all but the newest `keep_last` complete checkpoints (rank 0 only)."""
    latest = layout.read_latest(root)
    done = sorted(p for p in Path(root).glob("iter_*") if (p / layout.METADATA).is_file())
    for old in done[:-keep_last]:
        if old != latest:
            shutil.rmtree(old, ignore_errors=True)


def resume(ckpt_dir: Path, ddp: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict:
    """Load everything from a training checkpoint; return its chimed.json metadata."""
    from megatron.core import dist_checkpointing

    metadata = layout.read_metadata(ckpt_dir)
    if metadata.get("kind") != "train":
        raise ValueError(
            f"{ckpt_dir}: a {metadata.get('kind')!r} checkpoint has no optimizer state; "
            "start from it with checkpoint.load instead"
        )
    state = dist_checkpointing.load(_sharded_state(ddp, optimizer, is_loading=True), str(ckpt_dir))
    ddp.module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(metadata["scheduler"])
    _set_rng_state(state["rng"])
    return metadata


def _copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in layout.TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).is_file():
            shutil.copy2(src / name, dst / name)
