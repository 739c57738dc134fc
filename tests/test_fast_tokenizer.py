"""HF fast tokenizers (`tokenizer.json` only, as transformers 5 saves them): megatron_chimed/
fast_tokenizer.py behind the interface every stage uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_chimed.data.template import get_template
from megatron_chimed.fast_tokenizer import FastTokenizer
from megatron_chimed.testing.tiny_fast_tokenizer import CHATML
from megatron_chimed.testing.tiny_ziya import sample_texts
from megatron_chimed.tokenizer import ZiyaTokenizer

TEXTS = [
    "<human>:高血压患者每天吃多少盐？\n<bot>:每日食盐不超过5克。",
    "孩子发烧38.6℃需要吃药吗？<bot> 建议多喝水",
    "abc<human><bot>x",
]
DIALOGUE = [
    {"role": "user", "content": "头痛怎么办？"},
    {"role": "assistant", "content": "建议休息，多喝水。"},
]


def test_ziya_saved_by_transformers5_encodes_as_sentencepiece(
    tiny_ziya: Path, tiny_ziya_json: Path
) -> None:
    fast, spm = FastTokenizer(tiny_ziya_json), ZiyaTokenizer(tiny_ziya)
    assert (fast.vocab_size, fast.bos, fast.eos, fast.eod, fast.pad) == (2000, 1, 2, 2, 0)
    assert (fast.token_to_id("<human>"), fast.token_to_id("<bot>")) == (1998, 1999)
    texts = list(sample_texts())
    assert fast.encode_batch(texts) == spm.encode_batch(texts)
    for text in TEXTS:
        ids = fast.encode(text, bos=True, eos=True)
        assert ids == spm.encode(text, bos=True, eos=True)
        assert fast.decode(ids[1:-1], skip_special=False) == text
        assert fast.decode(ids) == text  # `<s>` / `</s>` dropped; `<bot>` is not special here
    # The Ziya template gives the same training ids and mask from either file.
    for name, stops in (("ziya", [2, 1998]), ("ziya_brackets", [2])):
        template = get_template(name)
        assert template.encode_dialogue(fast, DIALOGUE) == template.encode_dialogue(spm, DIALOGUE)
        assert template.stop_token_ids(fast) == template.stop_token_ids(spm) == stops


def test_chatml_specials_vocab_and_round_trip(tiny_chatml: Path, tiny_ziya_json: Path) -> None:
    tok = FastTokenizer(tiny_chatml)
    raw = json.loads((tiny_chatml / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in raw["added_tokens"]}
    assert (tok.bos, tok.eos, tok.pad) == (ids["<s>"], ids["</s>"], ids["<pad>"])
    assert tok.vocab_size == max(raw["model"]["vocab"].values()) + 1 == 600
    assert set(tok.special_strings) == {"<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"}
    assert tok.chat_template == CHATML
    assert tok.encode("答<|im_end|>")[-1] == ids["<|im_end|>"]
    for text in list(sample_texts())[:50]:
        encoded = tok.encode(text, bos=True, eos=True)
        assert encoded[0] == tok.bos and encoded[-1] == tok.eos
        assert tok.decode(encoded) == text
    # The dataset cache key tells the two tokenizers apart, and sees a chat template edit.
    assert tok.unique_identifiers != FastTokenizer(tiny_ziya_json).unique_identifiers


def test_cache_key_follows_the_chat_template(tiny_chatml: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_chatml, tmp_path / "tok"))
    before = FastTokenizer(folder).unique_identifiers
    (folder / "chat_template.jinja").write_text(CHATML.replace("\\n", " "))
    after = FastTokenizer(folder).unique_identifiers
    assert before["sha1"] == after["sha1"] and before["chat_template"] != after["chat_template"]


def test_special_tokens_from_special_tokens_map(tiny_chatml: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_chatml, tmp_path / "tok"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["bos_token"], config["pad_token"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    content = {"content": "<|im_start|>", "lstrip": False, "special": True}
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": content}))
    tok = FastTokenizer(folder)
    assert tok.bos == tok.token_to_id("<|im_start|>")
    assert tok.pad == tok.eos  # no pad and no unk: `</s>`, never trained on


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"bos_token": None}, r"tokenizer_config\.json: no bos_token"),
        ({"eos_token": "<eos>"}, r"tokenizer\.json: eos_token '<eos>' has no id"),
        ({"chat_template": 3}, r"field 'chat_template' is neither a string"),
    ],
)
def test_bad_config_is_one_clear_error(
    tiny_chatml: Path, tmp_path: Path, change: dict, error: str
) -> None:
    folder = Path(shutil.copytree(tiny_chatml, tmp_path / "tok"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=error):
        FastTokenizer(folder).chat_template  # noqa: B018 - reading it is the check


def test_not_a_tokenizer_file(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a tokenizers JSON file"):
        FastTokenizer(tmp_path)
