"""Write a megatron dist checkpoint (torch_dist) whose tensors are produced one at a time.

`dist_checkpointing.save` with megatron's own writer resolves every tensor before writing the
first byte, so it needs the whole model in RAM. Here each ShardedTensor carries a placeholder
of the right shape and dtype that is never touched, and the save planner calls the tensor's
producer only when PyTorch's serial FileSystemWriter asks for it: one tensor is alive at a
time. A producer returns either the tensor or a `Spliced` (byte ranges of the input files,
splice.py); then the placeholder goes to the writer and `StreamingFile` copies the ranges where
its bytes would go. Everything else (keys, metadata, the planner that records megatron's
metadata) is megatron's, so the result is exactly what `dist_checkpointing.load` reads.

The writer is told which tensor comes next and recognises its bytes by their address; the
`WriteLedger` then checks that every planned tensor was written once, with its planned size.

Speed: files are written with O_DIRECT (direct_file.py) and not fsynced one by one (the caller
flushes the whole folder once before its atomic rename, staging.py), and torch.save skips its
CRC32 pass over every byte: 0.1 s per 400 MB, about 10% of an HF -> megatron conversion, for a
checksum torch.load never checks (and a spliced record's would be the placeholder's).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.filesystem import FileSystem

from megatron_chimed.convert.direct_file import DirectFile, Segment
from megatron_chimed.convert.splice import Spliced
from megatron_chimed.convert.staging import WriteLedger

ItemKey = tuple[str, tuple[int, ...]]  # (sharded key, global offset of the chunk)


class Planned(NamedTuple):
    """One chunk to write: its size, and what makes its data when the writer asks for it."""

    nbytes: int
    produce: Callable[[], torch.Tensor | Spliced]


def item_name(key: ItemKey) -> str:
    """How errors name a chunk: its key and where it starts in the global tensor."""
    return f"{key[0]}{list(key[1])}"


@dataclass(frozen=True)
class _Next:
    """The tensor the writer will write next: its data's address, and its byte ranges if
    spliced (None: write the tensor's own bytes)."""

    name: str
    address: int
    segments: list[Segment] | None


class StreamingFile(DirectFile):
    """A file for PyTorch's checkpoint writer. The write of the expected tensor's bytes is
    recorded in the ledger (and is `copy_segments` instead when spliced); other writes (zip
    headers, pickled objects) go through."""

    def __init__(self, path: str | os.PathLike, files: StreamingFileSystem) -> None:
        super().__init__(path)
        self.files = files

    def write(self, b) -> int:  # noqa: ANN001 (any buffer)
        view = memoryview(b).cast("B")
        expected = self.files.next
        try:
            if expected is None or not view or _address(view) != expected.address:
                return super().write(view)
            self.files.next = None
            start = self.tell()
            if expected.segments is None:
                super().write(view)
            else:
                if sum(length for _, _, length in expected.segments) != len(view):
                    raise ValueError(f"{self.name}: {len(view)} B written for {expected.name}")
                self.copy_segments(expected.segments)
            self.files.ledger.record(expected.name, self.tell() - start)
            return len(view)
        except BaseException as err:  # torch.save's zip writer would mask it with its own
            self.files.failure = self.files.failure or err
            raise


def _address(view: memoryview) -> int:
    return np.frombuffer(view, dtype=np.uint8).ctypes.data


class StreamingFileSystem(FileSystem):
    """PyTorch's checkpoint file system, writing through `StreamingFile`s."""

    def __init__(self, ledger: WriteLedger) -> None:
        super().__init__()
        self.ledger = ledger
        self.next: _Next | None = None
        self.failure: BaseException | None = None  # the first write that failed

    def expect(self, name: str, tensor: torch.Tensor, segments: list[Segment] | None) -> None:
        """`tensor` (`name`) is the next tensor written; as `segments` if not None."""
        if self.next is not None:  # the writer copied it, or resolves ahead of writing
            raise RuntimeError(
                f"{name} was produced before {self.next.name} was written (PyTorch's "
                "checkpoint writer copied that tensor, or no longer writes each one as it asks)"
            )
        if tensor.numel() == 0:
            self.ledger.record(name, 0)
            return
        self.next = _Next(name, tensor.data_ptr(), segments)

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[io.IOBase]:
        if mode != "wb":
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with StreamingFile(path, self) as stream:
            yield stream


def by_sharded_key(sharded_state_dict: dict) -> dict[str, list]:
    """The main replicas of a sharded state dict grouped by checkpoint key, as megatron's own
    torch_dist save groups them before handing them to PyTorch (checked against megatron's
    private helper by tests/convert/test_canaries.py)."""
    from megatron.core.dist_checkpointing import ShardedObject
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import is_main_replica

    grouped: dict[str, list] = {}
    for sh in nested_values(sharded_state_dict):
        if is_main_replica(sh.replica_id):
            key = sh.unique_key if isinstance(sh, ShardedObject) else sh.key
            grouped.setdefault(key, []).append(sh)
    return grouped


def _strategy(producers: dict[ItemKey, Planned], files: StreamingFileSystem):  # noqa: ANN202
    """The save strategy (classes built here: megatron is slow to import, this file is not)."""
    from megatron.core.dist_checkpointing.strategies.torch import (
        MCoreSavePlanner,
        TorchDistSaveShardedStrategy,
        mcore_to_pyt_state_dict,
    )
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.planner import WriteItemType

    class StreamingPlanner(MCoreSavePlanner):
        def resolve_data(self, write_item):  # noqa: ANN001, ANN201
            held = super().resolve_data(write_item)
            if write_item.type == WriteItemType.BYTE_IO:
                return held
            key = (write_item.index.fqn, tuple(write_item.index.offset))
            produced = producers[key].produce()
            if math.prod(produced.shape) != held.numel() or produced.dtype != held.dtype:
                raise ValueError(
                    f"{item_name(key)}: produced {tuple(produced.shape)} {produced.dtype}, "
                    f"expected {tuple(held.shape)} {held.dtype}"
                )
            if isinstance(produced, Spliced):
                files.expect(item_name(key), held, produced.segments)
                return held
            tensor = produced.reshape(held.shape).contiguous()
            files.expect(item_name(key), tensor, None)
            return tensor

    class StreamingSaveStrategy(TorchDistSaveShardedStrategy):
        def save(self, sharded_state_dict, checkpoint_dir: Path) -> None:  # noqa: ANN001
            by_key = by_sharded_key(sharded_state_dict)
            # One thread: PyTorch's serial loader resolves items one by one. One file per
            # tensor: the writer keeps every tensor of a file alive until that file closes.
            # No fsync per file: the caller flushes the folder once before renaming it.
            writer = FileSystemWriter(
                str(checkpoint_dir), thread_count=1, single_file_per_rank=False, sync_files=False
            )
            writer.fs = files
            planner = StreamingPlanner(flatten_state_dict=False, flatten_sharded_tensors=False)
            dcp_save(mcore_to_pyt_state_dict(by_key, False), storage_writer=writer, planner=planner)

    return StreamingSaveStrategy()


@contextlib.contextmanager
def fast_save_options() -> Iterator[None]:
    """torch.save without its CRC32 pass (nothing reads it back)."""
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


def save_streaming(
    sharded_state_dict: dict, producers: dict[ItemKey, Planned], checkpoint_dir: Path
) -> None:
    """`dist_checkpointing.save`, with tensor data taken from `producers` at write time, keyed
    by (sharded key, global offset of the chunk), which is how PyTorch names each write item.
    Raises naming any planned chunk that was not written exactly once with its size."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    ledger = WriteLedger(str(checkpoint_dir))
    for key, planned in producers.items():
        ledger.plan(item_name(key), planned.nbytes)
    files = StreamingFileSystem(ledger)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    try:
        with fast_save_options():
            strategy = _strategy(producers, files)
            dist_checkpointing.save(sharded_state_dict, str(checkpoint_dir), strategy)
    except CheckpointException as err:
        # A BaseException wrapping each rank's error: re-raise ours (one rank) as itself. A
        # write that failed inside torch.save surfaces as its zip writer's "unexpected pos":
        # the file system kept the real error.
        original, _ = next(iter(err.failures.values()))
        raise files.failure or original from None
    ledger.check()


@contextlib.contextmanager
def single_process_group() -> Iterator[None]:
    """dist_checkpointing needs torch.distributed; a converter is one process, so make a
    private world of 1 (no port: an in-memory store) unless the caller already has one."""
    if dist.is_initialized():
        if dist.get_world_size() != 1:
            raise RuntimeError(
                "checkpoint conversion runs in one process; it was called inside a world of "
                f"{dist.get_world_size()} ranks (run tools/convert_*.py without torchrun)"
            )
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
