"""Room for a checkpoint: a free-space check before each save, one clear line when the disk
fills up during one, and no half-written folder left behind.

megatron's writer reports a full disk as "Worker failure: An error is caught while starting
worker 0" (the OSError and its errno are dropped on the way), leaves the partial `iter_*`
folder, and, with `checkpoint.keep_last`, a rerun fails the same way because old checkpoints
are pruned only after a successful save. So a save here:

1. estimates its size: the previous complete checkpoint's, else the bytes of the tensors it
   writes plus 20%;
2. checks the free space of the file system holding the checkpoints (rank 0) and, when short and
   `keep_last` allows, first removes what pruning after this save would remove anyway;
3. on failure removes its partial folder (`latest` never named it) and turns a full disk, seen
   by the manifest's write hook or anywhere in the error's chain, into
   `<folder>: no space left on <mount> (needed ~X GiB, free Y GiB)`.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from megatron_chimed.checkpoint import CheckpointError, layout
from megatron_chimed.checkpoint.manifest import WriteLog

GIB = 2**30
STATE_MARGIN = 1.2


def folder_bytes(ckpt_dir: Path) -> int:
    return sum(p.stat().st_size for p in ckpt_dir.iterdir() if p.is_file())


def _state_bytes(sharded_state: dict) -> int:
    """Bytes of the tensors this rank writes: main replicas only (the others are not saved)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, is_main_replica

    return sum(
        v.data.nbytes
        for v in nested_values(sharded_state)
        if isinstance(v, ShardedTensor) and v.data is not None and is_main_replica(v.replica_id)
    )


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def estimate(root: Path, sharded_state: dict) -> int:
    """Bytes the next checkpoint under `root` needs (collective)."""
    total: list[Any] = [_state_bytes(sharded_state)]
    if dist.is_initialized():
        total = [None] * dist.get_world_size()
        dist.all_gather_object(total, _state_bytes(sharded_state))
    latest = layout.read_latest(root)
    if latest is not None:
        return folder_bytes(latest)
    # Tensor bytes leave out the zip records, the index and the gathered fully_reshardable
    # state: 5-15% short on the tiny model.
    return int(sum(total) * STATE_MARGIN)


def _free(path: Path) -> int:
    while not path.exists():  # the root of a first save may not exist yet
        path = path.parent
    return shutil.disk_usage(path).free


def _mount(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def _gib(n: int) -> str:
    return f"{n / GIB:.3g}"


def no_space(target: Path, needed: int) -> str:
    return (
        f"{target}: no space left on {_mount(target)} (needed ~{_gib(needed)} GiB, "
        f"free {_gib(_free(target))} GiB)"
    )


def ensure_room(target: Path, needed: int, make_room: Callable[[], None] | None) -> None:
    """Raise CheckpointError on every rank when the file system of `target` has less than
    `needed` bytes free, after `make_room` (pruning) if given (collective)."""
    message: list[str | None] = [None]
    if _rank0():
        if _free(target) < needed and make_room is not None:
            make_room()
        if _free(target) < needed:
            message = [no_space(target, needed)]
    if dist.is_initialized():
        dist.broadcast_object_list(message, src=0)
    if message[0]:
        raise CheckpointError(message[0])


def _disk_full(err: BaseException | None) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        failures = getattr(err, "failures", None)  # DCP's CheckpointException: per-rank errors
        if isinstance(failures, dict) and any(_disk_full(e) for e, _ in failures.values()):
            return True
        err = err.__cause__ or err.__context__
    return False


def failed(err: BaseException, target: Path, needed: int, writes: WriteLog) -> None:
    """After a save raised `err` on this rank: remove the partial folder (rank 0) and raise the
    one-line error for a full disk, else re-raise `err`. No collectives: a rank whose write
    succeeded may be waiting in megatron's."""
    if _rank0():
        shutil.rmtree(target, ignore_errors=True)
    full = any(e.errno in (errno.ENOSPC, errno.EDQUOT) for e in writes.errors)
    if full or _disk_full(err):
        raise CheckpointError(no_space(target, needed)) from None
    raise err
