"""Canaries for what the converters take from megatron-core and PyTorch internals.

Each test pins one private name or undocumented behaviour the conversion relies on. When an
upgrade changes it, the named test fails here, instead of a conversion writing a checkpoint
that is wrong (the converters' own checks, `WriteLedger`, would then fail every conversion,
but without saying which internal moved).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from megatron_chimed.convert.buffers import Buffer
from megatron_chimed.convert.dcp_reader import CheckpointReader
from megatron_chimed.convert.streaming_save import (
    Planned,
    by_sharded_key,
    save_streaming,
    single_process_group,
)


def _sharded_state_dict() -> dict:
    """Stacked layers with their `_extra_state` objects, as hf_to_megatron builds them, plus a
    plain tensor and a replica that is not the main one."""
    from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor

    layers = {}
    for layer in range(2):
        data = torch.zeros(3, 4)
        layers[f"w.{layer}"] = ShardedTensor.from_rank_offsets(
            "w", data, (0, layer, 2), replica_id=0, prepend_axis_num=1
        )
        layers[f"w._extra_state.{layer}"] = ShardedObject(
            "w._extra_state", None, (2,), (layer,), replica_id=0
        )
    plain = ShardedTensor.from_rank_offsets("p", torch.zeros(5), replica_id=0)
    copy = ShardedTensor.from_rank_offsets("p", torch.zeros(5), replica_id=1)
    return {"model": {**layers, "p": plain}, "copy": copy}


def test_megatron_groups_the_state_dict_as_by_sharded_key() -> None:
    """streaming_save groups sharded objects by key itself, with public megatron API, where
    megatron's save uses the private `_replace_state_dict_keys_with_sharded_keys`: the groups,
    their keys and their order must stay the same."""
    from megatron.core.dist_checkpointing.strategies.torch import (
        _replace_state_dict_keys_with_sharded_keys,
    )

    state = _sharded_state_dict()
    theirs, _, _ = _replace_state_dict_keys_with_sharded_keys(state, True)
    ours = by_sharded_key(state)
    assert (
        list(ours)
        == list(theirs)
        == ["w", "w._extra_state/shard_0_2", "w._extra_state/shard_1_2", "p"]
    )
    assert all([id(x) for x in ours[k]] == [id(x) for x in theirs[k]] for k in ours)


def test_torch_storage_info_has_the_fields_the_reader_reads() -> None:
    """dcp_reader.py reads each chunk's file, byte range and transforms from PyTorch's private
    `_StorageInfo` records in the checkpoint's `.metadata`."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    fields = {f.name for f in dataclasses.fields(_StorageInfo)}
    assert {"relative_path", "offset", "length", "transform_descriptors"} <= fields


def test_torch_writer_writes_each_tensor_before_resolving_the_next(tmp_path: Path) -> None:
    """The streaming save hands PyTorch's FileSystemWriter tensors that share one buffer, and
    finds each one's bytes by address: that holds only while the writer resolves a tensor just
    before writing it, without copying it. (If not, save_streaming raises.)"""
    from megatron.core.dist_checkpointing import ShardedTensor

    buffer = Buffer(4 * 6)
    sharded, producers = {}, {}
    for k in range(3):

        def produce(k: int = k) -> torch.Tensor:
            return buffer.tensor((6,), torch.float32).fill_(k)

        sharded[f"t{k}"] = ShardedTensor.from_rank_offsets(
            f"t{k}", buffer.tensor((6,), torch.float32), replica_id=0
        )
        producers[(f"t{k}", (0,))] = Planned(24, produce)
    with single_process_group():
        save_streaming(sharded, producers, tmp_path)
    reader, out, scratch = CheckpointReader(tmp_path), Buffer(24), Buffer(24)
    for k in range(3):
        assert torch.equal(reader.read(f"t{k}", None, out, scratch), torch.full((6,), float(k)))
