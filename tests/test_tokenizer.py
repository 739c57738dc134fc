"""The Ziya tokenizer wrapper, `load_tokenizer`, and the tiny Ziya checkpoint built for tests."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from megatron_chimed.fast_tokenizer import FastTokenizer
from megatron_chimed.testing.tiny_ziya import TINY, make_tiny_ziya, sample_texts
from megatron_chimed.tokenizer import ZiyaTokenizer, load_tokenizer

TEXTS = [
    "<human>:高血压患者每天吃多少盐？\n<bot>:每日食盐不超过5克。",
    "孩子发烧38.6℃需要吃药吗？<bot> 建议多喝水",
    "abc<human><bot>x",
]


# The ids the sentencepiece path gave before HF fast tokenizers were added: Ziya's ids must not
# move, since every converted checkpoint and cached dataset depends on them.
PINNED = {
    TEXTS[0]: [1, 1998, 61, 587, 262, 600, 1115, 895, 1034, 1246, 932, 877, 1999, 61, 827, 934]
    + [1246, 891, 641, 1064, 1284, 865],
    TEXTS[2]: [1, 871, 1848, 101, 102, 1998, 1999, 123],
}
SAMPLE_IDS_SHA256 = "d6e92f7438b51d29ada7ad9fef8fed38b91c8a1c7854b087f1195f82119b5db7"
SAMPLE_BATCH_SHA256 = "93ff8ccbd50ffcb1a0446c4c6e76f61754068dced48ee9a2009bd875f63ba886"


def sha256_of(ids: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def test_sentencepiece_ids_are_pinned(tiny_ziya: Path) -> None:
    tok = load_tokenizer(tiny_ziya)
    assert type(tok) is ZiyaTokenizer
    for text, ids in PINNED.items():
        assert tok.encode(text, bos=True) == ids
    texts = list(sample_texts())
    encoded = [tok.encode(t, bos=True, eos=True) for t in texts]
    assert (len(texts), sum(map(len, encoded))) == (365, 14692)
    assert sha256_of(encoded) == SAMPLE_IDS_SHA256
    assert sha256_of(tok.encode_batch(texts)) == SAMPLE_BATCH_SHA256


def test_load_tokenizer_picks_the_file_it_finds(
    tiny_ziya: Path, tiny_ziya_json: Path, tmp_path: Path
) -> None:
    assert sorted(p.name for p in tiny_ziya_json.iterdir()) == [
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert type(load_tokenizer(tiny_ziya_json)) is FastTokenizer
    both = Path(shutil.copytree(tiny_ziya_json, tmp_path / "both"))
    for name in ("tokenizer.model", "added_tokens.json"):
        shutil.copy(tiny_ziya / name, both / name)
    assert type(load_tokenizer(both)) is ZiyaTokenizer  # sentencepiece wins: Ziya's ids stay
    with pytest.raises(FileNotFoundError, match=r"empty: no tokenizer\.model or tokenizer\.json"):
        load_tokenizer(tmp_path / "empty")


def test_ziya_tokens_and_template_file(tiny_ziya: Path, tmp_path: Path) -> None:
    tok = ZiyaTokenizer(tiny_ziya)
    assert [tok.token_to_id(t) for t in ("<human>", "<s>", "</s>", "<nope>")] == [1998, 1, 2, None]
    assert tok.special_tokens == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    assert tok.chat_template is None
    # The dataset cache key of a Ziya folder is what it was: no chat template, no new field.
    assert sorted(tok.unique_identifiers) == ["added", "class", "sha1"]
    folder = Path(shutil.copytree(tiny_ziya, tmp_path / "ziya"))
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    templated = ZiyaTokenizer(folder)
    assert templated.chat_template == "{{ messages[0]['content'] }}"
    assert templated.unique_identifiers != tok.unique_identifiers


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
