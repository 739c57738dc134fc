"""The packed cache on disk: memory-mapped arrays, a stamp that decides validity, no half files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_chimed.data.jsonio import DataError
from megatron_chimed.data.sft import cache
from megatron_chimed.data.sft.dataset import packed_sft_dataset


def only_cache(folder: Path) -> Path:
    """The prefix of the one cache in `folder`, which holds nothing else (no temp files)."""
    stamps = list(folder.glob("sft_*.json"))
    assert len(stamps) == 1
    prefix = stamps[0].with_suffix("")
    expected = {cache.stamp_path(prefix)} | {cache.array_path(prefix, n) for n in cache.ARRAYS}
    assert set(folder.iterdir()) == expected
    return prefix


def test_rows_are_memory_mapped_and_pickle_without_their_data(sample_mix, tok) -> None:
    ds = packed_sft_dataset(sample_mix(), tok)
    for array in (ds.tokens, ds.loss_mask, ds.sample_offsets, ds.row_offsets):
        assert isinstance(array, np.memmap) and not array.flags.writeable
    assert ds.tokens.dtype == np.uint16  # the tiny vocabulary (2,000) fits
    copy = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 4096 < ds.tokens.nbytes
    assert isinstance(copy.tokens, np.memmap)
    assert all(torch.equal(copy[i]["tokens"], ds[i]["tokens"]) for i in range(len(ds)))
    assert ds.stats["sharegpt"] == {"kept": 19, "samples": 21, "truncated_history": 2}


@pytest.mark.parametrize(
    "damage",
    ["stamp_content", "stamp_missing", "stamp_garbled", "array_truncated", "array_missing"],
)
def test_a_cache_that_does_not_match_its_stamp_is_rebuilt(sample_mix, tok, damage: str) -> None:
    cfg = sample_mix()
    first = packed_sft_dataset(cfg, tok)
    expected = [first[i]["tokens"] for i in range(len(first))]
    prefix = only_cache(Path(cfg.cache_dir))
    stamp, tokens = cache.stamp_path(prefix), cache.array_path(prefix, "tokens")
    content = json.loads(stamp.read_text())["content"]
    if damage == "stamp_content":  # e.g. made for another sequence length under this name
        saved = json.loads(stamp.read_text())
        saved["content"]["seq_length"] = 512
        stamp.write_text(json.dumps(saved))
    elif damage == "stamp_missing":  # a build killed before its last write
        stamp.unlink()
    elif damage == "stamp_garbled":
        stamp.write_text("{")
    elif damage == "array_truncated":
        tokens.write_bytes(tokens.read_bytes()[:-10])
    else:
        tokens.unlink()
    assert not cache.ready(prefix, content)
    again = packed_sft_dataset(cfg, tok)
    assert only_cache(Path(cfg.cache_dir)) == prefix and cache.ready(prefix, content)
    assert len(again) == len(expected)
    assert all(torch.equal(again[i]["tokens"], row) for i, row in enumerate(expected))


def test_other_inputs_get_a_cache_of_their_own(sample_mix, tok) -> None:
    cfg = sample_mix()
    packed_sft_dataset(cfg, tok)
    cfg.seq_length = 128
    packed_sft_dataset(cfg, tok)
    cfg.template = "ziya_brackets"
    packed_sft_dataset(cfg, tok)
    stamps = [json.loads(p.read_text()) for p in Path(cfg.cache_dir).glob("sft_*.json")]
    made_for = sorted((s["content"]["seq_length"], s["content"]["template"]) for s in stamps)
    assert made_for == [(128, "ziya"), (128, "ziya_brackets"), (256, "ziya")]


def test_bad_data_leaves_no_file_behind(sample_mix, tok, tmp_path: Path) -> None:
    bad = tmp_path / "chat.jsonl"
    good = json.dumps({"instruction": "头痛", "output": "多休息"}, ensure_ascii=False)
    bad.write_text(f"{good}\n" * 600 + '{"instruction": 1, "output": "x"}\n', encoding="utf-8")
    cfg = sample_mix(s0={"path": str(bad), "max_samples": 5})
    with pytest.raises(DataError, match=r"chat\.jsonl:601"):
        packed_sft_dataset(cfg, tok)
    assert list(Path(cfg.cache_dir).iterdir()) == []  # scratch files removed too
