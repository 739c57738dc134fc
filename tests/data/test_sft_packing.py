"""SFT encoding (truncation, drops), packing, masks and the cached packed dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_chimed.data.sft import cache as sft_cache
from megatron_chimed.data.sft import dataset as sft_dataset
from megatron_chimed.data.sft.config import load_data_config
from megatron_chimed.data.sft.encode import Encoder, EncodeStats
from megatron_chimed.data.sft.packing import (
    block_causal_mask,
    first_fit,
    layout_row,
    packed_seq_params,
)
from megatron_chimed.data.template import DOCTOR_INSTRUCTION, get_template
from megatron_chimed.tokenizer import ZiyaTokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok(tiny_ziya: Path) -> ZiyaTokenizer:
    return ZiyaTokenizer(tiny_ziya)


def dialogue(*texts: str) -> dict:
    roles = ["user", "assistant"] * len(texts)
    return {"messages": [{"role": r, "content": t} for r, t in zip(roles, texts)], "source": "s"}


# ---------------------------------------------------------------- encoding


def test_only_the_last_response_is_trained(tok: ZiyaTokenizer) -> None:
    stats = EncodeStats()
    ids, mask = Encoder(get_template("ziya"), tok, 256)(dialogue("问一", "答一", "问二", "答二"),
                                                        None, stats)  # fmt: skip
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "答二"
    assert ids[-1] == tok.eos and mask[-1] == 1
    assert stats.as_dict() == {"s": {"kept": 1}}


def test_history_is_cut_by_whole_exchanges_from_the_left(tok: ZiyaTokenizer) -> None:
    template = get_template("ziya")
    record = dialogue("头痛三天了" * 5, "建议休息", "要吃药吗", "可以吃布洛芬")
    full, _ = template.encode_dialogue(tok, record["messages"], DOCTOR_INSTRUCTION)
    last = template.encode_dialogue(tok, record["messages"][2:], DOCTOR_INSTRUCTION)
    stats = EncodeStats()
    ids, mask = Encoder(template, tok, len(full) - 1)(record, DOCTOR_INSTRUCTION, stats)
    # The instruction moves onto the first question that is kept.
    assert (ids, mask) == last
    assert stats.as_dict() == {"s": {"truncated_history": 1}}


def test_long_question_loses_its_left_part_never_the_response(tok: ZiyaTokenizer) -> None:
    question = "".join(f"第{i}句话。" for i in range(40))
    stats = EncodeStats()
    ids, mask = Encoder(get_template("ziya"), tok, 40)(dialogue(question, "请就医"), None, stats)
    assert len(ids) == 40  # filled to the budget: the cut overshoots by no more than needed
    text = tok.decode(ids, skip_special=False)
    assert text.startswith("<human>:") and text.endswith("第38句话。第39句话。\n<bot>: 请就医")
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "请就医"
    assert stats.as_dict() == {"s": {"truncated_question": 1}}


def test_long_response_is_dropped_or_cut_with_the_flag(tok: ZiyaTokenizer) -> None:
    answer = "多喝水，注意休息。" * 20
    stats = EncodeStats()
    assert Encoder(get_template("ziya"), tok, 40)(dialogue("怎么办", answer), None, stats) is None
    ids, mask = Encoder(get_template("ziya"), tok, 40, truncate_response=True)(
        dialogue("怎么办", answer), None, stats
    )
    assert len(ids) == 40 and ids[-1] != tok.eos  # a cut answer must not teach stopping
    assert answer.startswith(tok.decode([i for i, m in zip(ids, mask) if m]))
    assert stats.as_dict() == {"s": {"dropped_too_long": 1, "truncated_response": 1}}


def test_empty_responses_are_dropped_and_counted(tok: ZiyaTokenizer) -> None:
    stats = EncodeStats()
    encoder = Encoder(get_template("ziya"), tok, 64)
    assert encoder(dialogue("问题", "  \n"), None, stats) is None
    assert stats.as_dict() == {"s": {"dropped_empty_response": 1}}


# ---------------------------------------------------------------- packing and masks


def test_first_fit_decreasing() -> None:
    assert first_fit([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=500).tolist()
    bins = first_fit(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert max(sum(lengths[i] for i in b) for b in bins) <= 64
    with pytest.raises(ValueError, match="sample 1: 9 tokens"):
        first_fit([3, 9], 8)


SAMPLES = [
    (np.array([1, 10, 11, 2]), np.array([0, 0, 1, 1])),
    (np.array([1, 12, 2]), np.array([0, 0, 1])),
]


def test_layout_isolated_and_concat() -> None:
    iso = layout_row(SAMPLES, seq_length=8, pad=0, isolated=True)
    assert iso["tokens"].tolist() == [1, 10, 11, 2, 1, 12, 2, 0]
    assert iso["labels"].tolist() == [10, 11, 2, 1, 12, 2, 0, 0]
    # Targets: 11 and </s> of sample 1, </s> of sample 2; never the next <s> nor padding.
    assert iso["loss_mask"].tolist() == [0, 1, 1, 0, 0, 1, 0, 0]
    assert iso["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
    assert iso["cu_seqlens"].tolist() == [0, 4, 7, 8]
    cat = layout_row(SAMPLES, seq_length=8, pad=0, isolated=False)
    assert cat["position_ids"].tolist() == list(range(8))
    assert cat["cu_seqlens"].tolist() == [0, 8]
    assert all((cat[k] == iso[k]).all() for k in ("tokens", "labels", "loss_mask"))
    full = layout_row([*SAMPLES, (np.array([1, 2]), np.array([0, 1]))], 8, 0, isolated=True)
    assert full["cu_seqlens"].tolist() == [0, 4, 7, 8]  # the last sample's </s> is only a label


def test_block_causal_mask() -> None:
    mask = block_causal_mask(torch.tensor([[0, 2, 5, -1], [0, 5, -1, -1]]), 5)
    allowed = ~mask[:, 0]
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.bool
    assert allowed[0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    assert torch.equal(allowed[1], torch.ones(5, 5, dtype=torch.bool).tril())


def test_packed_seq_params_lays_rows_end_to_end() -> None:
    params = packed_seq_params(torch.tensor([[0, 4, 7, 8, -1], [0, 3, 8, -1, -1]]), 8)
    assert params.qkv_format == "thd"
    assert params.cu_seqlens_q.tolist() == [0, 4, 7, 8, 11, 16]
    assert params.max_seqlen_q == 5 and params.cu_seqlens_q.dtype == torch.int32


# ---------------------------------------------------------------- the cached dataset


@pytest.fixture
def sample_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository
    monkeypatch.setenv("CHIMED_CACHE", str(tmp_path))
    cfg = load_data_config(ROOT / "conf" / "data" / "sft_sample.yaml")
    cfg.seq_length = 256  # a run's training.seq_length; the data group does not set one
    return cfg


def test_dataset_rows_are_deterministic_and_cached(sample_cfg, tok: ZiyaTokenizer) -> None:
    ds = sft_dataset.packed_sft_dataset(sample_cfg, tok)
    files = list(Path(sample_cfg.cache_dir).glob("sft_*.json"))
    assert len(files) == 1 and not list(Path(sample_cfg.cache_dir).glob(".*"))
    stamp = files[0].stat().st_mtime_ns
    again = sft_dataset.packed_sft_dataset(sample_cfg, tok)
    assert files[0].stat().st_mtime_ns == stamp  # read from the cache, not rebuilt
    assert all(torch.equal(ds[i]["tokens"], again[i]["tokens"]) for i in range(len(ds)))
    assert ds.stats["sharegpt"] == {"kept": 19, "samples": 21, "truncated_history": 2}
    assert sum(s["samples"] for s in ds.stats.values()) == 322
    assert 0.9 < ds.non_pad_fraction() <= 1.0
    row = ds[3]
    assert row["tokens"].shape == (256,) and row["cu_seqlens"].shape == (ds.max_segments,)
    cu = row["cu_seqlens"][row["cu_seqlens"] >= 0]
    assert (row["tokens"][cu[:-1]][: len(ds.samples(3))] == tok.bos).all()

    sample_cfg.seed = 7
    other = sft_dataset.packed_sft_dataset(sample_cfg, tok)
    assert len(list(Path(sample_cfg.cache_dir).glob("sft_*.json"))) == 2
    assert not torch.equal(other[0]["tokens"], ds[0]["tokens"])


def test_failed_cache_write_leaves_no_file(sample_cfg, tok, monkeypatch) -> None:
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sft_cache, "gather_index", crash)
    with pytest.raises(OSError, match="disk full"):
        sft_dataset.packed_sft_dataset(sample_cfg, tok)
    assert os.listdir(sample_cfg.cache_dir) == []


def test_cache_defaults_to_the_folder_the_stage_passes_and_reports_reader_drops(
    tok: ZiyaTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository
    monkeypatch.delenv("CHIMED_CACHE", raising=False)
    shipped = load_data_config(ROOT / "conf" / "data" / "sft_sample.yaml")
    assert shipped.cache_dir is None  # so that the run's own folder is used
    monkeypatch.chdir(tmp_path)  # the old default, runs/cache/sft, would land here
    talk = [{"from": "gpt", "value": "您好"}, {"from": "human", "value": "头痛"},
            {"from": "gpt", "value": "多休息"}, {"from": "human", "value": "谢谢"}]  # fmt: skip
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps({"conversations": talk}, ensure_ascii=False) + "\n", "utf-8")
    cfg = load_data_config(
        {"seq_length": 64, "sources": [{"name": "chat", "reader": "sharegpt", "path": str(src)}]}
    )
    run_cache = tmp_path / "run" / "cache" / "sft"
    ds = sft_dataset.packed_sft_dataset(cfg, tok, run_cache)
    assert len(list(run_cache.glob("sft_*.json"))) == 1 and not (tmp_path / "runs").exists()
    assert ds.stats["chat"] == {
        "dropped_leading_assistant_turn": 1,
        "dropped_trailing_user_turn": 1,
        "kept": 1,
        "samples": 1,
    }


def test_choose_applies_cap_then_weight() -> None:
    rng = np.random.default_rng(0)
    assert sorted(sft_dataset.choose(4, None, 2.0, rng).tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    half = sft_dataset.choose(10, None, 0.5, rng)
    assert len(half) == 5 and len(set(half.tolist())) == 5
    capped = sft_dataset.choose(10, 3, 1.5, rng)
    assert len(capped) == 5 and len(set(capped.tolist())) == 3


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"packing": "stream"}, "data.packing='stream'"),
        ({"sources": [{"name": "a", "reader": "csv", "path": "x"}]}, r"data.sources\[0\].reader"),
        ({"sources": [{"name": "a", "reader": "mc", "path": "nope.json"}]},
         r"data.sources\[0\].path=nope.json: no such file"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(override: dict, error: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        load_data_config({"sources": [], **override})


def test_epochs_depend_only_on_the_index() -> None:
    rows = list(range(5))
    epochs = sft_dataset.Epochs(rows, num_samples=12, seed=3)  # type: ignore[arg-type]
    forward = [epochs[i] for i in range(12)]
    backward = [sft_dataset.Epochs(rows, 12, 3)[i] for i in reversed(range(12))][::-1]
    assert len(epochs) == 12 and forward == backward
    assert forward[:5] == rows  # epoch 0 keeps the stored (already shuffled) order
    assert sorted(forward[5:10]) == rows and forward[5:10] != rows
    assert [sft_dataset.Epochs(rows, 12, 4)[i] for i in range(5, 10)] != forward[5:10]
