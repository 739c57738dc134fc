"""The reward model exports to HF LlamaForSequenceClassification and back."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tiny_ziya_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("rm_export")
    return run_worker("tests/reward/reward_export.py", 1, tmp / "results.json",
                      "--hf", str(tiny_ziya_fp32), "--tmp", str(tmp))  # fmt: skip


def test_hf_config_is_a_one_label_sequence_classifier(results: dict) -> None:
    assert results["architectures"] == ["LlamaForSequenceClassification"]
    assert results["num_labels"] == 1 and results["pad_token_id"] == 0
    assert results["hf_keys_with_score"] == ["score.weight"]


def test_transformers_scores_equal_the_megatron_reward_model(results: dict) -> None:
    assert results["score_spread"] > 1e-3  # distinct scores, so equality means something
    assert results["hf_vs_megatron"] < 1e-4


def test_hf_round_trip_keeps_the_scores(results: dict) -> None:
    assert results["round_trip_vs_megatron"] < 1e-5
