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


SPREAD = [
    {"id": 0, "prompt": "a", "answers": ["a0", "a1", "a2"], "scores": [3.0, 2.5, 2.0]},
    {"id": 1, "prompt": "b", "answers": ["b0", "b1", "b2"], "scores": [-1.0, 0.0, -2.0]},
    {"id": 2, "prompt": "c", "answers": ["c0", " ", "c2"], "scores": [1.0, 9.0, 2.0]},
]


def test_global_top_m_keeps_the_best_answers_of_the_round_wherever_their_prompts() -> None:
    kept = kept_records(SPREAD, k=1, threshold=None, selection="global_top_m", m=4)
    # prompt a gives three, b none; the blank c1 (score 9) is never kept
    assert [(r["prompt_id"], r["answer_index"]) for r in kept] == [(0, 0), (0, 1), (0, 2), (2, 2)]
    top_1 = kept_records(SPREAD, k=1, threshold=None)
    assert [(r["prompt_id"], r["answer_index"]) for r in top_1] == [(0, 0), (1, 1), (2, 2)]
    above = kept_records(SPREAD, k=1, threshold=2.0, selection="global_top_m", m=10)
    assert [r["score"] for r in above] == [3.0, 2.5]


def test_global_ties_go_to_the_lower_prompt_then_answer() -> None:
    rows = [
        {"id": 5, "prompt": "x", "answers": ["x0", "x1"], "scores": [1.0, 1.0]},
        {"id": 2, "prompt": "y", "answers": ["y0", "y1"], "scores": [1.0, 0.0]},
    ]
    kept = kept_records(rows, k=1, threshold=None, selection="global_top_m", m=2)
    assert [(r["prompt_id"], r["answer_index"]) for r in kept] == [(2, 0), (5, 0)]


def test_the_report_compares_every_rule_on_the_same_scores() -> None:
    from megatron_chimed.rejection_sampling.selection import rule_stats

    rules = rule_stats(SPREAD, k=1, m=None, threshold=1.5)
    assert rules["top_k"] == {"k": 1, "kept": 2, "prompts_with_kept": 2, "mean_reward": 2.5}
    # at top_k's count (2), globally: a0 and a1
    assert rules["global_top_m"] == {
        "m": 2, "kept": 2, "prompts_with_kept": 1, "mean_reward": pytest.approx(2.75)
    }  # fmt: skip
    assert rules["threshold"] == {
        "threshold": 1.5, "kept": 4, "prompts_with_kept": 2, "mean_reward": pytest.approx(2.375)
    }  # fmt: skip
    assert "threshold" not in rule_stats(SPREAD, k=1, m=3, threshold=None)


def test_rs_selection_settings_are_checked_with_clear_errors() -> None:
    with pytest.raises(ValueError, match="rs.selection='best'"):
        RSConfig(reward_checkpoint="rm", selection="best").validate()
    with pytest.raises(ValueError, match="rs.top_m=None: rs.selection=global_top_m keeps"):
        RSConfig(reward_checkpoint="rm", selection="global_top_m").validate()
    with pytest.raises(ValueError, match="rs.score_batch_tokens=0"):
        RSConfig(reward_checkpoint="rm", score_batch_tokens=0).validate()
    RSConfig(reward_checkpoint="rm", selection="global_top_m", top_m=100).validate()
