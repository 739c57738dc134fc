"""Fixtures of the SFT data tests: the tiny Ziya tokenizer and the bundled sample mix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from megatron_chimed.config.load import PACKAGE_DIR  # noqa: F401  (registers ${pkg:})
from megatron_chimed.data.sft.config import SFTDataConfig, load_data_config
from megatron_chimed.tokenizer import ZiyaTokenizer

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tok(tiny_ziya: Path) -> ZiyaTokenizer:
    return ZiyaTokenizer(tiny_ziya)


@pytest.fixture
def sample_mix(tmp_path: Path) -> Callable[..., SFTDataConfig]:
    """`sample_mix(seq_length, **{source index: {field: value}})`: the bundled sample mix
    (conf/data/sft_sample.yaml) with those source fields set, cached under tmp_path."""

    def make(seq_length: int = 256, own: bool = False, **sources: dict) -> SFTDataConfig:
        name = "sft_own_example.yaml" if own else "sft_sample.yaml"
        cfg = load_data_config(ROOT / "conf" / "data" / name)
        cfg.seq_length, cfg.cache_dir = seq_length, str(tmp_path / "cache")
        for index, fields in sources.items():
            for key, value in fields.items():
                setattr(cfg.sources[int(index.removeprefix("s"))], key, value)
        return cfg

    return make
