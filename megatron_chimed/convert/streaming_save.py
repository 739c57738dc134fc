"""Write a megatron dist checkpoint (torch_dist) whose tensors are produced one at a time.

`dist_checkpointing.save` with megatron's own writer resolves every tensor before writing the
first byte, so it needs the whole model in RAM. Here each ShardedTensor carries a zero-byte
placeholder of the right shape and dtype (a stride-0 expansion of one element), and the save
planner calls a producer for the real tensor only when PyTorch's serial FileSystemWriter asks
for it: one tensor is alive at a time. Everything else (keys, common.pt, metadata.json, the
planner that records megatron's metadata) is megatron's, so the result is exactly what
`dist_checkpointing.load` reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist

Producer = Callable[[], torch.Tensor]


def placeholder(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor with this shape and dtype that owns a single element of memory."""
    return torch.zeros((), dtype=dtype).expand(shape)


def _strategy(producers: dict[tuple[str, tuple[int, ...]], Producer]):  # noqa: ANN202
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
            dcp_save(
                mcore_to_pyt_state_dict(by_key, False),
                # One thread: PyTorch's serial loader resolves items one by one. One file per
                # tensor: the writer keeps every tensor of a file alive until that file closes.
                storage_writer=FileSystemWriter(
                    str(checkpoint_dir), thread_count=1, single_file_per_rank=False
                ),
                planner=StreamingPlanner(
                    self.producers, flatten_state_dict=False, flatten_sharded_tensors=False
                ),
            )

    return StreamingSaveStrategy(producers)


def save_streaming(
    sharded_state_dict: dict,
    producers: dict[tuple[str, tuple[int, ...]], Producer],
    checkpoint_dir: Path,
) -> None:
    """`dist_checkpointing.save`, with tensor data taken from `producers` at write time.

    `producers` is keyed by (sharded key, global offset of the chunk), which is how PyTorch
    names each write item.
    """
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    try:
        dist_checkpointing.save(sharded_state_dict, str(checkpoint_dir), _strategy(producers))
    except CheckpointException as err:
        # A BaseException wrapping each rank's error: re-raise ours (one rank) as itself.
        original, _ = next(iter(err.failures.values()))
        raise original from None


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
