"""HF <-> megatron conversion: round trips, logits parity at TP=1/2, 13B shapes at TP=2/4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_chimed.convert import hf_to_megatron, megatron_to_hf
from megatron_chimed.convert.mapping import LLAMA_CAUSAL_LM
from megatron_chimed.model import ModelConfig
from megatron_chimed.testing.tiny_ziya import hf_config, read_hf_tensors, write_shards
from megatron_chimed.testing.workers import ROOT, run_worker

pytestmark = pytest.mark.distributed

SHAPE_13B = ModelConfig(
    name="13b_shaped",
    hidden_size=5120,
    num_layers=2,
    num_attention_heads=40,
    num_query_groups=40,
    ffn_hidden_size=13824,
    vocab_size=39410,
    max_position_embeddings=4096,
)


def cheap_state_dict(model: ModelConfig) -> dict[str, torch.Tensor]:
    """Distinct finite bf16 values, 5x faster than random_state_dict's randn for 2 GB: random
    bit patterns between 0x3C00 and 0x3F80 are the bf16 numbers in [2**-7, 1)."""
    sd = {}
    for entry, layer in LLAMA_CAUSAL_LM.entries(model):
        names = LLAMA_CAUSAL_LM.hf_names(entry, layer)
        for name, shape in zip(names, entry.hf_shapes(model)):
            bits = torch.empty(shape, dtype=torch.int16).random_(0x3C00, 0x3F80)
            sd[name] = bits.view(torch.bfloat16)
    return sd


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, tiny_ziya_fp32: Path) -> Path:
    return hf_to_megatron(tiny_ziya_fp32, tmp_path_factory.mktemp("meg") / "tiny", progress=False)


@pytest.fixture(scope="module")
def shaped_13b(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 13B-shaped 2-layer bf16 HF folder (about 2 GB, no tokenizer) and its conversion."""
    hf = tmp_path_factory.mktemp("hf13b")
    (hf / "config.json").write_text(json.dumps(hf_config(SHAPE_13B, "bfloat16")))
    write_shards(cheap_state_dict(SHAPE_13B), hf, 3, safetensors=True)
    out = hf_to_megatron(hf, tmp_path_factory.mktemp("meg13b") / "ckpt", target_tp=4)
    return hf, out


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_ziya_fp32: Path,
    converted: Path,
    shaped_13b: tuple[Path, Path],
) -> dict:
    tmp = tmp_path_factory.mktemp("convert_checks")
    args = ["--tiny-hf", str(tiny_ziya_fp32), "--tiny-megatron", str(converted)]
    args += ["--big-hf", str(shaped_13b[0]), "--big-megatron", str(shaped_13b[1])]
    args += ["--save-root", str(tmp / "saved")]
    return run_worker("tests/convert/convert_checks.py", 4, tmp / "results.json", *args)


@pytest.mark.parametrize("fixture", ["tiny_ziya", "tiny_ziya_safetensors", "tiny_ziya_fp32"])
def test_round_trip_is_bit_exact(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str
) -> None:
    hf = request.getfixturevalue(fixture)
    ckpt = hf_to_megatron(hf, tmp_path / "megatron", progress=False)
    back = megatron_to_hf(ckpt, tmp_path / "hf", max_shard_bytes=300_000, progress=False)
    source, exported = read_hf_tensors(hf), read_hf_tensors(back)
    assert sorted(exported) == sorted(source)
    for name, tensor in source.items():
        assert exported[name].dtype == tensor.dtype, name
        assert torch.equal(exported[name], tensor), name
    assert len(list(back.glob("model-*.safetensors"))) > 1
    for name in ("tokenizer.model", "added_tokens.json", "config.json", "generation_config.json"):
        assert (back / name).is_file(), name
    assert json.loads((back / "config.json").read_text())["vocab_size"] == 2000


def test_export_generates_the_same_greedy_tokens(tiny_ziya_fp32: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    ckpt = hf_to_megatron(tiny_ziya_fp32, tmp_path / "megatron", progress=False)
    back = megatron_to_hf(ckpt, tmp_path / "hf", progress=False)
    prompt = torch.tensor([[1, 50, 60, 70, 80]])
    tokens = [
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).generate(
            prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12
        )
        for folder in (tiny_ziya_fp32, back)
    ]
    assert tokens[0].shape[1] == 17
    assert torch.equal(tokens[0], tokens[1])


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize(
    "way", ["load_model_weights", "dist_checkpointing_load", "load_hf_weights"]
)
def test_fp32_logits_match_transformers(results: dict, tp: int, way: str) -> None:
    assert results[f"tiny_tp{tp}"][way] < 1e-4


def test_converted_keys_are_what_the_model_asks_for(results: dict) -> None:
    assert results["tiny_tp1"]["missing_keys"] == []
    assert results["tiny_tp1"]["metadata"] == {
        "kind": "converted",
        "iteration": 0,
        "architecture": "LlamaForCausalLM",
        "spec": "transformer_engine",
    }


@pytest.mark.parametrize("tp", [1, 2])
def test_save_model_weights_then_load_matches(results: dict, tp: int) -> None:
    r = results[f"tiny_tp{tp}"]
    assert r["latest"] == "iter_0000005"
    assert r["saved_metadata"] == {"kind": "test", "iteration": 5, "spec": "local"}
    assert r["resave_diff"] < 1e-4


@pytest.mark.parametrize("tp", [2, 4])
def test_13b_shaped_shards_padding_and_values(results: dict, tp: int) -> None:
    r = results[f"big_tp{tp}"]
    h, f, padded = 5120, 13824, 39424
    assert SHAPE_13B.padded_vocab_size(tp) == padded
    shapes = r["shapes"]
    assert shapes["embedding.word_embeddings.weight"] == [padded // tp, h]
    assert shapes["output_layer.weight"] == [padded // tp, h]
    assert shapes["decoder.layers.1.self_attention.linear_qkv.weight"] == [3 * h // tp, h]
    assert shapes["decoder.layers.1.self_attention.linear_proj.weight"] == [h, h // tp]
    assert shapes["decoder.layers.1.mlp.linear_fc1.weight"] == [2 * f // tp, h]
    assert shapes["decoder.layers.1.mlp.linear_fc2.weight"] == [h, f // tp]
    assert shapes["decoder.final_layernorm.weight"] == [h]
    assert r["padding_zero"]
    assert r["shards_equal"]


def test_verify_conversion_cli_at_tp2(tiny_ziya_fp32: Path, converted: Path) -> None:
    cmd = [sys.executable, "tools/verify_conversion.py", "--hf", str(tiny_ziya_fp32)]
    cmd += ["--megatron", str(converted), "--tp", "2", "--seq-length", "16"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("tp=2"))
    fields = dict(item.split("=") for item in line.split())
    assert float(fields["max_abs_logit_diff"]) < 1e-4
    assert float(fields["loss_diff"]) < 1e-4
    assert float(fields["greedy_agreement"]) == 1.0
    assert proc.stdout.strip().endswith("OK")
