"""The converters' I/O pieces: direct reads of torch_dist chunks, HF reads into buffers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from megatron_chimed.convert.buffers import Buffer
from megatron_chimed.convert.dcp_reader import CheckpointReader
from megatron_chimed.convert.hf_folder import _safetensors_infos
from megatron_chimed.convert.streaming_save import Planned, save_streaming, single_process_group


def test_reader_assembles_chunks_as_a_tp2_checkpoint_stores_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Column-split (like linear_proj at TP=2) and row-split stacked layers, as trained
    checkpoints hold them: every layer read back equals what was saved. (Written with the
    converter's own save, i.e. megatron's planner and PyTorch's writer, which runs on CPU.)"""
    from megatron.core.dist_checkpointing import ShardedTensor

    layers = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(2, 6, 8).to(torch.bfloat16)
    plain = torch.randn(10, 4)
    sharded, producers = {}, {}
    for layer in range(2):
        for rank in range(2):  # layer l, TP rank r: columns [4r, 4r + 4)
            data = layers[layer, :, 4 * rank : 4 * rank + 4].contiguous()
            sharded[f"w.{layer}.{rank}"] = ShardedTensor.from_rank_offsets(
                "w", data, (0, layer, 2), (2, rank, 2), replica_id=0, prepend_axis_num=1
            )
            producers[("w", (layer, 0, 4 * rank))] = Planned(data.nbytes, data.clone)
    for rank in range(2):  # rows split in two
        data = plain[5 * rank : 5 * rank + 5].clone()
        sharded[f"p.{rank}"] = ShardedTensor.from_rank_offsets(
            "p", data, (0, rank, 2), replica_id=0
        )
        producers[("p", (5 * rank, 0))] = Planned(data.nbytes, data.clone)
    with single_process_group():
        save_streaming(sharded, producers, tmp_path)
    # Every chunk takes the direct path (raw bytes found in the zip), not the torch.load fallback.
    monkeypatch.setattr(torch, "load", None)
    reader = CheckpointReader(tmp_path)
    out, scratch = Buffer(1000), Buffer(1000)
    for layer in range(2):
        got = reader.read("w", layer, out, scratch)
        assert got.shape == (6, 8) and torch.equal(got, layers[layer])
    assert torch.equal(reader.read("p", None, out, scratch), plain)


def test_hf_header_offsets_and_buffer_views(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int32).to(torch.bfloat16)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    infos = _safetensors_infos(tmp_path / "x.safetensors")
    raw = (tmp_path / "x.safetensors").read_bytes()
    buffer = Buffer(128)
    for name, tensor in tensors.items():
        info = infos[name]
        assert (info.shape, info.dtype) == (tuple(tensor.shape), tensor.dtype)
        view = buffer.tensor(info.shape, info.dtype, offset=8)
        # Its storage is exactly its bytes, so PyTorch's checkpoint writer does not clone it.
        assert view.untyped_storage().nbytes() == tensor.nbytes
        view.reshape(-1).view(torch.uint8).copy_(
            torch.frombuffer(
                bytearray(raw[info.offset : info.offset + tensor.nbytes]), dtype=torch.uint8
            )
        )
        assert torch.equal(view, tensor)


def test_bin_offsets_are_found_and_checked(tmp_path: Path) -> None:
    """Byte ranges of `.bin` tensors come from the zip records; a tensor stored as a view of a
    larger storage still gets its own range; a non-contiguous one gets none and is read through
    torch.load. Every read equals torch.load's."""
    from megatron_chimed.convert.hf_folder import TensorInfo, _bin_infos

    base = torch.randn(6, 4)
    tensors = {
        "a": torch.randn(3, 5).to(torch.bfloat16),
        "rows": base[2:4],  # contiguous, inside a larger storage
        "t": base.t(),  # not contiguous
        "b": torch.arange(7, dtype=torch.float32),
    }
    path = tmp_path / "pytorch_model.bin"
    torch.save(tensors, path)
    infos = _bin_infos(path)
    assert infos["t"].offset is None
    assert all(infos[k].offset is not None for k in ("a", "rows", "b"))
    raw = path.read_bytes()
    for key in ("a", "rows", "b"):
        info: TensorInfo = infos[key]
        expected = tensors[key].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert raw[info.offset : info.offset + len(expected)] == expected, key
