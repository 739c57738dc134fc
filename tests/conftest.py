"""Shared fixtures: test assets are built here, never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_ziya(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaMA in Ziya's layout (3 `.bin` shards + index, bf16, tokenizer)."""
    from megatron_chimed.testing.tiny_ziya import make_tiny_ziya

    return make_tiny_ziya(tmp_path_factory.mktemp("hf") / "tiny_ziya")


@pytest.fixture(scope="session")
def tiny_ziya_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny model saved in fp32, for parity tests with tight tolerances."""
    from megatron_chimed.testing.tiny_ziya import make_tiny_ziya

    return make_tiny_ziya(tmp_path_factory.mktemp("hf") / "tiny_ziya_fp32", dtype="float32")


@pytest.fixture(scope="session")
def tiny_ziya_safetensors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as safetensors shards + model.safetensors.index.json."""
    from megatron_chimed.testing.tiny_ziya import make_tiny_ziya

    return make_tiny_ziya(tmp_path_factory.mktemp("hf") / "tiny_ziya_st", safetensors=True)


@pytest.fixture(scope="session")
def tiny_ziya_json(tiny_ziya: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Ziya tokenizer as transformers 5 saves it: tokenizer.json, no tokenizer.model."""
    from megatron_chimed.testing.tiny_fast_tokenizer import resave_with_transformers

    return resave_with_transformers(tiny_ziya, tmp_path_factory.mktemp("tok") / "ziya_json")


@pytest.fixture(scope="session")
def tiny_chatml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer.json with ChatML tokens and chat_template: not a Ziya model."""
    from megatron_chimed.testing.tiny_fast_tokenizer import make_chatml_tokenizer

    return make_chatml_tokenizer(tmp_path_factory.mktemp("tok") / "chatml")
