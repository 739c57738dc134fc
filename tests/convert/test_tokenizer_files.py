"""Tokenizer files through conversion (megatron_chimed/convert/tokenizer_files.py): an HF fast
tokenizer (`tokenizer.json` only, as transformers 5 saves it) is checked and carried, not
dropped."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from megatron_chimed.checkpoint import layout
from megatron_chimed.convert.tokenizer_files import check_tokenizer
from megatron_chimed.fast_tokenizer import FastTokenizer
from megatron_chimed.testing.tiny_ziya import TINY
from megatron_chimed.tokenizer import SOURCES, load_tokenizer

TEXT = "<human>:高血压患者每天吃多少盐？\n<bot>:每日食盐不超过5克。"


def test_check_reads_tokenizer_json(tiny_ziya_json: Path, tmp_path: Path) -> None:
    assert check_tokenizer(tiny_ziya_json, TINY, "config.json") is True
    small = dataclasses.replace(TINY, vocab_size=1999)
    with pytest.raises(ValueError, match="tokenizer has 2000 tokens but the embedding has only"):
        check_tokenizer(tiny_ziya_json, small, "config.json")
    assert check_tokenizer(tmp_path, TINY, "config.json") is False  # no tokenizer: a warning


def test_conversion_carries_a_transformers5_tokenizer(
    tiny_ziya: Path, tiny_ziya_json: Path, tmp_path: Path
) -> None:
    from megatron_chimed.convert import hf_to_megatron

    hf = Path(shutil.copytree(tiny_ziya, tmp_path / "hf"))
    for name in layout.TOKENIZER_FILES:
        (hf / name).unlink(missing_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_ziya_json / name, hf / name)
    (hf / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    hf_to_megatron(hf, tmp_path / "ckpt", progress=False)
    carried = tmp_path / "ckpt" / layout.TOKENIZER
    assert sorted(p.name for p in carried.iterdir()) == [
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    tok = load_tokenizer(carried)
    assert type(tok) is FastTokenizer and tok.chat_template == "{{ messages[0]['content'] }}"
    assert tok.encode(TEXT, bos=True) == load_tokenizer(tiny_ziya).encode(TEXT, bos=True)
    assert set(SOURCES) <= set(layout.TOKENIZER_FILES)
