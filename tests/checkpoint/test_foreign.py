"""Megatron-Bridge's and Megatron-LM's checkpoints read as ours: where their iteration is, the
shape their metadata records, their tokenizer, and an HF export bit-exact to the original."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml

from megatron_chimed.checkpoint import CheckpointError, layout, verified
from megatron_chimed.config.schema import ModelConfig
from megatron_chimed.convert import hf_to_megatron, megatron_to_hf
from megatron_chimed.testing.foreign_checkpoints import (
    make_bridge_checkpoint,
    make_megatron_lm_checkpoint,
)
from megatron_chimed.testing.tiny_ziya import TINY, read_hf_tensors

SHAPE = {
    "hidden_size": TINY.hidden_size,
    "num_layers": TINY.num_layers,
    "num_attention_heads": TINY.num_attention_heads,
    "num_query_groups": TINY.num_query_groups,
    "ffn_hidden_size": TINY.ffn_hidden_size,
    "norm_epsilon": TINY.norm_epsilon,
    "rotary_base": TINY.rotary_base,
    "max_position_embeddings": TINY.max_position_embeddings,
    "untie_embeddings_and_output_weights": True,
    "init_method_std": 0.02,
}


@pytest.fixture(scope="module")
def converted(tiny_ziya: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_to_megatron(tiny_ziya, tmp_path_factory.mktemp("ours") / "ckpt", progress=False)


@pytest.fixture(scope="module")
def bridge(converted: Path, tiny_ziya_json: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bridge_checkpoint(converted, tiny_ziya_json, tmp_path_factory.mktemp("b") / "mb")


@pytest.fixture(scope="module", params=["embedded", "common.pt"])
def megatron_lm(
    request: pytest.FixtureRequest,
    converted: Path,
    tiny_ziya: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """Megatron-LM at megatron-core 0.19 (common state in the torch_dist files) and <= 0.18
    (common.pt), trained with --tokenizer-model pointing at the sentencepiece file."""
    out = tmp_path_factory.mktemp("mlm") / "ckpt"
    tokenizer = str(tiny_ziya / "tokenizer.model")
    return make_megatron_lm_checkpoint(converted, tokenizer, out, request.param == "common.pt")


def _assert_bit_exact(exported: Path, original: Path) -> None:
    ours, theirs = read_hf_tensors(exported), read_hf_tensors(original)
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        assert torch.equal(ours[name], tensor), name
    config = json.loads((exported / "config.json").read_text())
    assert config["vocab_size"] == TINY.vocab_size == 2000


def test_bridge_checkpoint_has_bridge_layout_and_is_read_from_its_run_config(bridge: Path) -> None:
    assert (bridge / "latest_checkpointed_iteration.txt").read_text() == "0"
    assert not (bridge / "latest").exists() and not (bridge / "tokenizer").exists()
    ckpt = bridge / "iter_0000000"
    files = {p.name for p in ckpt.iterdir()}
    assert {"run_config.yaml", "train_state.pt", "metadata.json", "tokenizer"} <= files
    assert not (ckpt / "chimed.json").exists() and not (ckpt / "common.pt").exists()
    assert layout.resolve(bridge) == ckpt
    metadata = layout.read_metadata(ckpt)
    assert metadata["kind"] == "megatron-bridge"
    assert metadata["architecture"] == "LlamaForCausalLM"
    assert metadata["iteration"] == 0 and metadata["dtype"] == "bfloat16"
    # Bridge stores the HF vocabulary unpadded: our padding at TP=1 must give those 2000 rows.
    assert metadata["model"] == {
        **SHAPE, "name": "megatron_bridge", "vocab_size": 2000, "make_vocab_size_divisible_by": 1
    }  # fmt: skip
    assert layout.tokenizer_dir(ckpt, metadata) == ckpt / "tokenizer"
    assert verified.load_point(bridge, "refuse") == ckpt  # what checkpoint.load= reads


def test_export_of_a_bridge_checkpoint_is_bit_exact(
    bridge: Path, tiny_ziya: Path, tmp_path: Path
) -> None:
    out = megatron_to_hf(bridge, tmp_path / "hf", progress=False)
    _assert_bit_exact(out, tiny_ziya)
    # Its tokenizer came from iter_0000000/tokenizer/ (save_pretrained: tokenizer.json).
    assert (out / "tokenizer.json").read_bytes() == (
        bridge / "iter_0000000" / "tokenizer" / "tokenizer.json"
    ).read_bytes()


def test_megatron_lm_checkpoint_is_read_from_its_args(megatron_lm: Path, tiny_ziya: Path) -> None:
    ckpt = megatron_lm / "iter_0000005"
    assert layout.resolve(megatron_lm) == ckpt
    metadata = layout.read_metadata(ckpt)
    assert metadata["kind"] == "megatron-lm"
    assert metadata["iteration"] == 5 and metadata["dtype"] == "bfloat16"
    # Its args have no vocab_size: the tokenizer its tokenizer_model names gives 2000, and
    # Megatron-LM's padding (128 x TP=1) is ours.
    assert metadata["model"] == {
        **SHAPE, "name": "megatron_lm", "vocab_size": 2000, "make_vocab_size_divisible_by": 128
    }  # fmt: skip
    assert metadata["tokenizer"] == str(tiny_ziya)
    assert layout.tokenizer_dir(ckpt, metadata) == tiny_ziya


def test_export_of_a_megatron_lm_checkpoint_is_bit_exact(
    megatron_lm: Path, tiny_ziya: Path, tmp_path: Path
) -> None:
    out = megatron_to_hf(megatron_lm, tmp_path / "hf", progress=False)
    _assert_bit_exact(out, tiny_ziya)
    assert (out / "tokenizer.model").read_bytes() == (tiny_ziya / "tokenizer.model").read_bytes()


def _megatron_lm_folder(tmp_path: Path, **changes: object) -> Path:
    """An iteration folder with only what the metadata reader looks at: the torch_dist marker
    and a common.pt whose args are a LLaMA's, changed by `changes`."""
    args = argparse.Namespace(
        num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
        group_query_attention=True, num_query_groups=2, max_position_embeddings=256,
        position_embedding_type="rope", normalization="RMSNorm", swiglu=True,
        add_bias_linear=False, padded_vocab_size=1024, make_vocab_size_divisible_by=128,
        tensor_model_parallel_size=2, vocab_size=1000, tokenizer_model=None,
    )  # fmt: skip
    for key, value in changes.items():
        setattr(args, key, value)
    folder = tmp_path / "iter_0000003"
    folder.mkdir()
    (folder / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    torch.save({"args": args, "checkpoint_version": 3.0}, folder / "common.pt")
    return folder


def test_megatron_lm_vocabulary_is_the_true_size_padded_for_the_saved_tp(tmp_path: Path) -> None:
    metadata = layout.read_metadata(_megatron_lm_folder(tmp_path))
    model = metadata["model"]
    assert (model["vocab_size"], model["make_vocab_size_divisible_by"]) == (1000, 256)
    assert model["num_query_groups"] == 2 and metadata["iteration"] == 3  # from the name
    assert metadata["dtype"] == "float32"


def test_without_vocab_size_or_tokenizer_every_stored_row_is_kept(tmp_path: Path) -> None:
    model = layout.read_metadata(_megatron_lm_folder(tmp_path, vocab_size=None))["model"]
    assert model["vocab_size"] == 1024
    assert ModelConfig(**model).padded_vocab_size(1) == 1024


@pytest.mark.parametrize(
    ("field", "value"),
    [("normalization", "LayerNorm"), ("swiglu", False), ("num_experts", 8)],
)
def test_a_megatron_lm_model_that_is_no_llama_is_refused_naming_the_field(
    tmp_path: Path, field: str, value: object
) -> None:
    folder = _megatron_lm_folder(tmp_path, **{field: value})
    with pytest.raises(CheckpointError, match=rf"common\.pt args: {field}={value!r}, expected"):
        layout.read_metadata(folder)


def test_a_bridge_model_that_is_no_llama_is_refused_naming_the_field(
    bridge: Path, tmp_path: Path
) -> None:
    config = yaml.safe_load((bridge / "iter_0000000" / "run_config.yaml").read_text())
    config["model"]["num_moe_experts"] = 8
    folder = tmp_path / "iter_0000000"
    folder.mkdir()
    (folder / "run_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match=r"run_config\.yaml model: num_moe_experts=8"):
        layout.read_metadata(folder)


def test_a_folder_no_tool_recognises_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}: no chimed\.json and no latest"):
        layout.resolve(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}: no chimed\.json"):
        verified.load_point(tmp_path, "fallback")


def test_a_tracker_naming_a_missing_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("12")
    with pytest.raises(CheckpointError, match=r"names iter_0000012, which is not a checkpoint"):
        layout.resolve(tmp_path)


def test_our_own_checkpoints_describe_themselves_alike_in_both_tools_metadata(
    converted: Path,
) -> None:
    """What Bridge and Megatron-LM read from our files is the shape chimed.json records."""
    from megatron_chimed.checkpoint import foreign

    ckpt = converted / "iter_0000000"
    ours = layout.read_metadata(ckpt)["model"]
    for theirs in (foreign.bridge_metadata(ckpt), foreign.megatron_lm_metadata(ckpt)):
        model = theirs["model"]
        assert {k: model[k] for k in SHAPE} == {k: ours[k] for k in SHAPE}
    # Megatron-LM's args keep the true size; Bridge is given the stored (padded) rows.
    assert foreign.megatron_lm_metadata(ckpt)["model"]["vocab_size"] == 2000
    assert foreign.bridge_metadata(ckpt)["model"]["vocab_size"] == 2048
