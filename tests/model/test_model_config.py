"""Config errors are raised before anything starts, naming the field."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_chimed.config import load
from megatron_chimed.model import ModelConfig, ParallelConfig, resolve_transformer_impl
from megatron_chimed.model.builder import transformer_config
from megatron_chimed.platform import validate_world
from megatron_chimed.testing.tiny_ziya import TINY

# The real numbers, read from the YAML users run with.
ZIYA = load(["model=ziya_13b_v2"]).model


def test_ziya_yaml_has_the_real_shape() -> None:
    assert (ZIYA.hidden_size, ZIYA.num_layers, ZIYA.num_attention_heads) == (5120, 40, 40)
    assert (ZIYA.num_query_groups, ZIYA.ffn_hidden_size, ZIYA.vocab_size) == (40, 13824, 39410)
    assert (ZIYA.norm_epsilon, ZIYA.rotary_base, ZIYA.max_position_embeddings) == (1e-6, 1e4, 4096)
    assert ZIYA.untie_embeddings_and_output_weights


def test_vocab_padding_matches_megatron_lm() -> None:
    assert ZIYA.padded_vocab_size(1) == 39424
    assert ZIYA.padded_vocab_size(2) == 39424
    assert ZIYA.padded_vocab_size(8) == 39936
    assert ModelConfig(vocab_size=257).padded_vocab_size(2) == 512


@pytest.mark.parametrize(
    ("changes", "tp", "message"),
    [
        (
            {"hidden_size": 5120, "num_attention_heads": 40, "num_query_groups": 40},
            3,
            "num_attention_heads=40 is not divisible by parallel.tensor_model_parallel_size=3",
        ),
        (
            {"num_attention_heads": 8, "num_query_groups": 2},
            4,
            "num_query_groups=2 is not divisible",
        ),
        (
            {"hidden_size": 48, "num_attention_heads": 6, "num_query_groups": 4},
            1,
            "num_attention_heads=6 is not divisible by model.num_query_groups",
        ),
        ({"hidden_size": 66}, 1, "hidden_size=66 is not divisible"),
    ],
)
def test_shape_errors_name_the_field(changes: dict, tp: int, message: str) -> None:
    cfg = dataclasses.replace(TINY, **changes)
    with pytest.raises(ValueError, match=message):
        cfg.validate(tensor_parallel=tp)


def test_sequence_longer_than_positions() -> None:
    with pytest.raises(
        ValueError, match="seq_length=4097 is longer than model.max_position_embeddings=4096"
    ):
        ZIYA.validate(tensor_parallel=2, seq_length=4097)


def test_world_not_divisible_by_tp() -> None:
    assert validate_world(8, 2) == 4
    with pytest.raises(
        ValueError, match="world size 3 is not divisible by parallel.tensor_model_parallel_size=2"
    ):
        validate_world(3, 2)


def test_ziya_transformer_config_has_the_real_shape() -> None:
    cfg = transformer_config(ZIYA, ParallelConfig(tensor_model_parallel_size=2), "bf16")
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_attention_heads) == (5120, 40, 40)
    assert (cfg.ffn_hidden_size, cfg.num_query_groups, cfg.kv_channels) == (13824, 40, 128)
    assert cfg.layernorm_epsilon == 1e-6 and cfg.normalization == "RMSNorm"
    assert cfg.gated_linear_unit and not cfg.add_bias_linear
    assert cfg.params_dtype == torch.bfloat16 and cfg.bf16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_transformer_engine_without_cuda_is_an_error() -> None:
    assert resolve_transformer_impl("auto") == "local"
    with pytest.raises(RuntimeError, match="transformer_engine needs CUDA"):
        resolve_transformer_impl("transformer_engine")
    with pytest.raises(ValueError, match="expected auto, local or transformer_engine"):
        resolve_transformer_impl("te")


def test_sequence_parallel_without_te_is_an_error() -> None:
    with pytest.raises(ValueError, match="sequence_parallel=true needs the Transformer Engine"):
        transformer_config(
            TINY, ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True)
        )


def test_auto_on_gpu_without_te_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from megatron_chimed.model import builder

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(builder, "have_transformer_engine", lambda: False)
    with caplog.at_level("WARNING"):
        assert resolve_transformer_impl("auto") == "local"
    assert "WITHOUT flash attention" in caplog.text
    with pytest.raises(RuntimeError, match="Transformer Engine is not installed"):
        resolve_transformer_impl("transformer_engine")


def test_unknown_precision() -> None:
    with pytest.raises(ValueError, match="precision='fp8'"):
        transformer_config(TINY, ParallelConfig(), "fp8")  # type: ignore[arg-type]


def test_tiny_yaml_is_the_tiny_test_checkpoint_shape() -> None:
    # conf/model/tiny.yaml drives the demo; tiny_ziya.TINY writes the checkpoint it starts from.
    assert load(["model=tiny"]).model == TINY


def test_attention_backend_defaults_to_te_choosing() -> None:
    from megatron.core.transformer.enums import AttnBackend

    from megatron_chimed.model.builder import _attention_backend

    # Forcing flash makes megatron switch TE's fused and unfused backends off: with flash-attn
    # missing or out of TE's range no backend would be left, and Hopper loses cuDNN attention.
    assert ZIYA.attention_backend == "auto"
    assert _attention_backend(ZIYA, "transformer_engine") == AttnBackend.auto
    flash = dataclasses.replace(ZIYA, attention_backend="flash")
    assert _attention_backend(flash, "transformer_engine") == AttnBackend.flash
    assert _attention_backend(ZIYA, "local") == AttnBackend.local
    with pytest.raises(ValueError, match="model.attention_backend=flash needs the Transformer"):
        _attention_backend(flash, "local")
    with pytest.raises(ValueError, match="model.attention_backend='cudnn': expected one of"):
        dataclasses.replace(ZIYA, attention_backend="cudnn").validate()


def test_te_with_a_flash_attn_it_rejects_is_an_error_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from megatron_chimed.model import builder
    from megatron_chimed.platform.gpu_versions import check_gpu_stack

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(builder, "have_transformer_engine", lambda: True)
    problems = tuple(check_gpu_stack("2.10.0", "2.8.3.post2"))
    monkeypatch.setattr(builder, "_gpu_stack_problems", lambda: problems)
    for requested in ("auto", "transformer_engine"):
        with pytest.raises(RuntimeError, match=r"transformer-engine 2\.10\.0 .*flash-attn 2\.8\.3"):
            resolve_transformer_impl(requested)
    monkeypatch.setattr(builder, "_gpu_stack_problems", lambda: ())
    assert resolve_transformer_impl("auto") == "transformer_engine"
