"""Write a megatron dist checkpoint (torch_dist) whose tensors are produced one at a time.

`dist_checkpointing.save` with megatron's own writer resolves every tensor before writing the
first byte, so it needs the whole model in RAM. Here each ShardedTensor carries a placeholder
of the right shape and dtype that is never touched, and the save planner calls a producer for
the real tensor only when PyTorch's serial FileSystemWriter asks for it: one tensor is alive at
a time. Everything else (keys, metadata, the planner that records megatron's metadata) is
megatron's, so the result is exactly what `dist_checkpointing.load` reads.

Speed: files are not fsynced one by one (the caller flushes the whole folder once before its
atomic rename, `staging.py`), and torch.save skips its CRC32 pass (torch.load never checks it;
DCP has no checksums either).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.filesystem import FileSystem

Producer = Callable[[], torch.Tensor]


class Placeholders:
    """Contiguous tensors of any shape that cost no RAM: views of one never-written buffer.

    Megatron makes every non-contiguous ShardedTensor contiguous before saving (a stride-0
    expansion would become a real zero-filled tensor: the whole model in RAM), so placeholders
    must be contiguous. The shared buffer is `torch.empty`: its pages are reserved, not touched,
    so they never count in RSS, and one buffer the size of the largest tensor serves all.
    """

    def __init__(self, shapes: list[tuple[tuple[int, ...], torch.dtype]]) -> None:
        largest = max(math.prod(shape) * dtype.itemsize for shape, dtype in shapes)
        self.buffer = torch.empty(largest, dtype=torch.uint8)

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        return self.buffer[:nbytes].view(dtype).view(shape)


@contextlib.contextmanager
def fast_save_options() -> Iterator[None]:
    """torch.save without its CRC32 pass over every byte (nothing reads it back)."""
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


def _strategy(  # noqa: ANN202
    producers: dict[tuple[str, tuple[int, ...]], Producer], file_system: FileSystem | None
):
    """The save strategy (classes built here: megatron is slow to import, this file is not)."""
    from megatron.core.dist_checkpointing.strategies.torch import (
        MCoreSavePlanner,
        TorchDistSaveShardedStrategy,
        _replace_state_dict_keys_with_sharded_keys,
        mcore_to_pyt_state_dict,
    )
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.planner import WriteItemType

    class StreamingPlanner(MCoreSavePlanner):
        def __init__(self, producers: dict[tuple[str, tuple[int, ...]], Producer], **kw) -> None:
            super().__init__(**kw)
            self.producers = producers

        def resolve_data(self, write_item):  # noqa: ANN001, ANN201
            held = super().resolve_data(write_item)
            if write_item.type == WriteItemType.BYTE_IO:
                return held
            produce = self.producers[(write_item.index.fqn, tuple(write_item.index.offset))]
            tensor = produce()
            if tensor.numel() != held.numel() or tensor.dtype != held.dtype:
                raise ValueError(
                    f"{write_item.index.fqn} at {tuple(write_item.index.offset)}: produced "
                    f"{tuple(tensor.shape)} {tensor.dtype}, expected {tuple(held.shape)} "
                    f"{held.dtype}"
                )
            return tensor.reshape(held.shape).contiguous()

    class StreamingSaveStrategy(TorchDistSaveShardedStrategy):
        def __init__(self, producers: dict[tuple[str, tuple[int, ...]], Producer]) -> None:
            super().__init__()
            self.producers = producers

        def save(self, sharded_state_dict, checkpoint_dir: Path) -> None:  # noqa: ANN001
            by_key, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, True)
            # One thread: PyTorch's serial loader resolves items one by one. One file per
            # tensor: the writer keeps every tensor of a file alive until that file closes.
            # No fsync per file: the caller flushes the folder once before renaming it.
            writer = FileSystemWriter(
                str(checkpoint_dir), thread_count=1, single_file_per_rank=False, sync_files=False
            )
            if file_system is not None:
                writer.fs = file_system
            dcp_save(
                mcore_to_pyt_state_dict(by_key, False),
                storage_writer=writer,
                planner=StreamingPlanner(
                    self.producers, flatten_state_dict=False, flatten_sharded_tensors=False
                ),
            )

    return StreamingSaveStrategy(producers)


def save_streaming(
    sharded_state_dict: dict,
    producers: dict[tuple[str, tuple[int, ...]], Producer],
    checkpoint_dir: Path,
    file_system: FileSystem | None = None,
) -> None:
    """`dist_checkpointing.save`, with tensor data taken from `producers` at write time.

    `producers` is keyed by (sharded key, global offset of the chunk), which is how PyTorch
    names each write item. `file_system` replaces PyTorch's (e.g. a `SplicingFileSystem`).
    """
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    try:
        with fast_save_options():
            strategy = _strategy(producers, file_system)
            dist_checkpointing.save(sharded_state_dict, str(checkpoint_dir), strategy)
    except CheckpointException as err:
        # A BaseException wrapping each rank's error: re-raise ours (one rank) as itself. A
        # write that failed inside torch.save surfaces as its zip writer's "unexpected pos":
        # the file system kept the real error.
        original, _ = next(iter(err.failures.values()))
        raise getattr(file_system, "failure", None) or original from None


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
