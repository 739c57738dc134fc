"""Every conversion error names its file and key, and leaves no half-written output behind."""

from __future__ import annotations

import importlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from megatron_chimed.convert import hf_to_megatron, megatron_to_hf
from megatron_chimed.convert.buffers import Buffer
from megatron_chimed.convert.direct_file import DirectFile
from megatron_chimed.convert.hf_folder import HFCheckpoint


@pytest.fixture
def hf_copy(tiny_ziya: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_ziya, tmp_path / "hf"))


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def assert_nothing_written(parent: Path, name: str = "out") -> None:
    assert sorted(p.name for p in parent.iterdir() if name in p.name) == []


def test_wrong_architecture(hf_copy: Path, tmp_path: Path) -> None:
    edit_config(hf_copy, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match=r"config\.json: architectures='GPT2LMHeadModel'.*Llama"):
        hf_to_megatron(hf_copy, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_config_and_weights_disagree_on_a_shape(hf_copy: Path, tmp_path: Path) -> None:
    edit_config(hf_copy, intermediate_size=180)
    with pytest.raises(ValueError, match=r"pytorch_model-\d+-of-00003\.bin: tensor 'model\.layers"):
        hf_to_megatron(hf_copy, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_missing_shard(hf_copy: Path, tmp_path: Path) -> None:
    (hf_copy / "pytorch_model-00002-of-00003.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"index\.json lists shard 'pytorch_model-00002"):
        hf_to_megatron(hf_copy, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_unknown_tensor_is_named(hf_copy: Path) -> None:
    edit_config(hf_copy, num_hidden_layers=1)
    with pytest.raises(KeyError, match=r"unknown tensor 'model\.layers\.1\."):
        HFCheckpoint(hf_copy)


def test_tp_that_does_not_divide_the_heads(hf_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_attention_heads=4 is not divisible by .*size=3"):
        hf_to_megatron(hf_copy, tmp_path / "out", target_tp=3, progress=False)
    assert_nothing_written(tmp_path)


def test_tokenizer_larger_than_the_embedding(hf_copy: Path, tmp_path: Path) -> None:
    added = json.loads((hf_copy / "added_tokens.json").read_text())
    (hf_copy / "added_tokens.json").write_text(json.dumps({**added, "<extra>": 2000}))
    with pytest.raises(
        ValueError, match="tokenizer has 2001 tokens but the embedding has only 2000"
    ):
        hf_to_megatron(hf_copy, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_existing_output_needs_overwrite(tiny_ziya: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    with pytest.raises(FileExistsError, match="--overwrite"):
        hf_to_megatron(tiny_ziya, out, progress=False)
    assert (out / "keep.txt").read_text() == "previous"
    hf_to_megatron(tiny_ziya, out, overwrite=True, progress=False)
    assert (out / "latest").is_file() and not (out / "keep.txt").exists()
    with pytest.raises(FileExistsError, match="--overwrite"):
        megatron_to_hf(out, out, progress=False)


def test_failure_midway_leaves_the_previous_output(
    tiny_ziya: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    hf_to_megatron(tiny_ziya, out, progress=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    calls = []

    def failing_copy(self: DirectFile, segments: list) -> None:  # the 5th tensor's bytes fail
        calls.append(self)
        if len(calls) == 5:
            raise OSError("disk went away")
        return original(self, segments)

    original = DirectFile.copy_segments
    monkeypatch.setattr(DirectFile, "copy_segments", failing_copy)
    with pytest.raises(OSError, match="disk went away"):
        hf_to_megatron(tiny_ziya, out, overwrite=True, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_planned_tensor_left_out_of_the_save_is_named(
    tiny_ziya: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF -> megatron: a tensor the plan names but the save never writes fails the conversion
    (megatron itself checks only that each saved tensor is complete, not that it is there)."""
    module = importlib.import_module("megatron_chimed.convert.hf_to_megatron")

    def without_final_norm(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        sharded, producers = plan(*args, **kwargs)
        del sharded["decoder.final_layernorm.weight"]
        return sharded, producers

    plan = module.megatron_sharded_state_dict
    monkeypatch.setattr(module, "megatron_sharded_state_dict", without_final_norm)
    missing = r"never written: decoder\.final_layernorm\.weight\[0\]$"
    with pytest.raises(RuntimeError, match=missing):
        hf_to_megatron(tiny_ziya, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_a_tensor_the_writer_copies_is_caught(
    tiny_ziya: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF -> megatron: spliced bytes go where the placeholder's bytes are written, found by
    address; if the writer copies the placeholder first, the conversion fails, naming it."""

    def loose(self, shape, dtype, offset=0):  # noqa: ANN001, ANN202 (storage larger than it)
        return torch.zeros(2 * math.prod(shape), dtype=dtype)[: math.prod(shape)].view(shape)

    monkeypatch.setattr(Buffer, "tensor", loose)
    with pytest.raises(
        RuntimeError, match=r"embedding\.word_embeddings\.weight\[0, 0\] was written"
    ):
        hf_to_megatron(tiny_ziya, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_a_planned_hf_tensor_left_unwritten_is_named(
    tiny_ziya: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """megatron -> HF: a tensor the plan names but neither the shard layout nor the tensor
    stream carries fails the export, naming it."""
    from megatron_chimed.convert import safetensors_writer

    module = importlib.import_module("megatron_chimed.convert.megatron_to_hf")
    ckpt = hf_to_megatron(tiny_ziya, tmp_path / "megatron", progress=False)
    name = "model.layers.1.mlp.up_proj.weight"
    split, stream = safetensors_writer.split_into_shards, module._hf_tensors

    def shards_without(plan, max_shard_bytes):  # noqa: ANN001, ANN202
        return split([item for item in plan if item[0] != name], max_shard_bytes)

    def tensors_without(*args):  # noqa: ANN002, ANN202
        return ((n, tensor) for n, tensor in stream(*args) if n != name)

    monkeypatch.setattr(safetensors_writer, "split_into_shards", shards_without)
    monkeypatch.setattr(module, "_hf_tensors", tensors_without)
    missing = r"never written: model\.layers\.1\.mlp\.up_proj\.weight$"
    with pytest.raises(RuntimeError, match=missing):
        megatron_to_hf(ckpt, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)


def test_a_safetensors_header_longer_than_its_file_is_named(
    tiny_ziya_safetensors: Path, tmp_path: Path
) -> None:
    """A damaged length field (2^60) is one clear error, not a MemoryError from reading it."""
    folder = tmp_path / "hf"
    shutil.copytree(tiny_ziya_safetensors, folder)
    shard = sorted(folder.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[:8] = (1 << 60).to_bytes(8, "little")
    shard.write_bytes(bytes(data))
    claims = rf"{shard.name}: not a safetensors file \(its header claims {1 << 60} bytes"
    with pytest.raises(ValueError, match=claims):
        hf_to_megatron(folder, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path)
