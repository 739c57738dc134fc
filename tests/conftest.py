"""Shared fixtures: test assets are built here, never downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


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
