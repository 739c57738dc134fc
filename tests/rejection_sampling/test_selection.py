"""Rejection sampling without a model: top-k selection, ties, thresholds, ShareGPT output."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.config.stages import RSConfig
from megatron_chimed.data.sft.readers import read_sharegpt
from megatron_chimed.rejection_sampling import files
from megatron_chimed.rejection_sampling.selection import (
    kept_records,
    kept_stats,
    score_stats,
    select_top_k,
)


def test_top_k_is_best_first() -> None:
    assert select_top_k([0.1, 2.0, -1.0, 1.5], k=2) == [1, 3]
    assert select_top_k([0.1, 2.0, -1.0, 1.5], k=9) == [1, 3, 0, 2]


def test_ties_go_to_the_lower_index_whatever_the_order_of_the_scores() -> None:
    assert select_top_k([1.0, 3.0, 3.0, 3.0], k=2) == [1, 2]
    assert select_top_k([3.0, 3.0, 3.0, 1.0], k=2) == [0, 1]
    assert select_top_k([0.5, 0.5, 0.5, 0.5], k=3) == [0, 1, 2]


def test_threshold_keeps_only_scores_above_it() -> None:
    assert select_top_k([0.1, 2.0, 0.5, 1.5], k=3, threshold=0.5) == [1, 3]
    assert select_top_k([0.1, 0.2], k=1, threshold=1.0) == []


ROWS = [
    {"id": 0, "prompt": "头痛怎么办？", "answers": ["多休息。", "  ", "不知道。"],
     "scores": [1.0, 5.0, -1.0]},
    {"id": 1, "prompt": "发烧怎么办？", "answers": ["多喝水。", "就医。", "不知道。"],
     "scores": [2.0, 2.0, 0.0]},
]  # fmt: skip


def test_blank_answers_are_never_kept_even_when_they_score_best() -> None:
    kept = kept_records(ROWS, k=1, threshold=None)
    picked = [(r["prompt_id"], r["answer_index"], r["score"]) for r in kept]
    assert picked == [(0, 0, 1.0), (1, 0, 2.0)]  # prompt 1: a tie, the first answer wins


def test_statistics_mean_best_of_n_gain_and_kept() -> None:
    stats = score_stats(ROWS)
    assert stats["answers"] == 6
    assert stats["mean"] == pytest.approx(9.0 / 6)
    assert stats["mean_best"] == pytest.approx(3.5)  # 5.0 (blank, still scored) and 2.0
    assert stats["best_of_n_gain"] == pytest.approx(3.5 - 1.5)
    kept = kept_records(ROWS, k=2, threshold=0.5)
    assert kept_stats(ROWS, kept) == pytest.approx(
        {"kept": 3, "prompts_with_kept": 2, "mean_all": 1.5, "mean_kept": 5.0 / 3,
         "kept_gain": 5.0 / 3 - 1.5}
    )  # fmt: skip


def test_kept_answers_read_back_through_the_sft_sharegpt_reader(tmp_path: Path) -> None:
    path = tmp_path / "kept.jsonl"
    files.write_jsonl(path, kept_records(ROWS, k=1, threshold=None))
    records = list(read_sharegpt(path, "rs"))
    assert [[m["content"] for m in r["messages"]] for r in records] == [
        ["头痛怎么办？", "多休息。"], ["发烧怎么办？", "多喝水。"]
    ]  # fmt: skip


def test_rs_config_names_the_bad_key() -> None:
    with pytest.raises(ValueError, match="rs.top_k=5"):
        RSConfig(reward_checkpoint="rm", num_samples=4, top_k=5).validate()
    with pytest.raises(ValueError, match="rs.reward_checkpoint=''"):
        RSConfig().validate()
    with pytest.raises(ValueError, match="rs.stop_after_phase='scoring'"):
        RSConfig(reward_checkpoint="rm", stop_after_phase="scoring").validate()


def test_the_final_policy_is_the_last_rounds_fine_tune(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no rejection-sampling round"):
        files.final_policy(tmp_path)
    for r in (0, 1, 10):  # numeric order, not text order
        (tmp_path / "rs" / f"round_{r}" / "train").mkdir(parents=True)
    assert files.final_policy(tmp_path) == tmp_path / "rs" / "round_10" / "train" / "checkpoints"
