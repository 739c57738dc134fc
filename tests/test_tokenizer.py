"""The Ziya tokenizer wrapper and the tiny Ziya checkpoint built for tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megatron_chimed.testing.tiny_ziya import TINY, make_tiny_ziya
from megatron_chimed.tokenizer import ZiyaTokenizer

TEXTS = [
    "<human>:高血压患者每天吃多少盐？\n<bot>:每日食盐不超过5克。",
    "孩子发烧38.6℃需要吃药吗？<bot> 建议多喝水",
    "abc<human><bot>x",
]


def test_vocab_is_not_a_multiple_of_128(tiny_ziya: Path) -> None:
    tok = ZiyaTokenizer(tiny_ziya)
    assert tok.vocab_size == TINY.vocab_size == 2000
    assert (tok.human, tok.bot) == (1998, 1999)
    assert (tok.bos, tok.eos, tok.pad) == (1, 2, 0)


def test_added_tokens_are_single_ids_and_round_trip(tiny_ziya: Path) -> None:
    tok = ZiyaTokenizer(tiny_ziya)
    ids = tok.encode(TEXTS[0], bos=True)
    assert ids[:2] == [tok.bos, tok.human] and tok.bot in ids
    assert tok.decode(ids, skip_special=False) == TEXTS[0]
    assert tok.decode(ids) == TEXTS[0].replace("<human>", "").replace("<bot>", "")


def test_same_ids_as_transformers(tiny_ziya: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_ziya)
    tok = ZiyaTokenizer(tiny_ziya)
    for text in TEXTS:
        assert tok.encode(text, bos=True) == hf(text).input_ids


def test_transformers_loads_the_checkpoint_layout(tiny_ziya: Path) -> None:
    from transformers import AutoModelForCausalLM

    files = sorted(p.name for p in tiny_ziya.iterdir())
    assert "pytorch_model.bin.index.json" in files
    assert [f for f in files if f.startswith("pytorch_model-")] == [
        f"pytorch_model-0000{k}-of-00003.bin" for k in (1, 2, 3)
    ]
    model = AutoModelForCausalLM.from_pretrained(tiny_ziya)
    assert model.dtype == torch.bfloat16
    assert model.get_input_embeddings().weight.shape == (2000, 64)
    index = json.loads((tiny_ziya / "pytorch_model.bin.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())


def test_safetensors_variant(tiny_ziya_safetensors: Path) -> None:
    from transformers import AutoModelForCausalLM

    assert (tiny_ziya_safetensors / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(tiny_ziya_safetensors)
    assert model.config.vocab_size == 2000


def test_bad_tokenizer_folders(tmp_path: Path, tiny_ziya: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        ZiyaTokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes((tiny_ziya / "tokenizer.model").read_bytes())
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<human>": 2005}))
    with pytest.raises(ValueError, match="do not continue from 1998"):
        ZiyaTokenizer(tmp_path)


def test_existing_output_is_refused(tiny_ziya: Path) -> None:
    with pytest.raises(FileExistsError, match="exists"):
        make_tiny_ziya(tiny_ziya)
