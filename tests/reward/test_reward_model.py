"""The reward model at TP=1 and TP=2 over gloo: one 2-process launch (reward_checks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.reward.model import VALUE_HEAD
from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, tiny_ziya_fp32: Path) -> dict:
    tmp = tmp_path_factory.mktemp("reward")
    return run_worker(
        "tests/reward/reward_checks.py",
        2,
        tmp / "results.json",
        "--ckpt",
        str(tmp / "ckpt"),
        "--tokenizer",
        str(tiny_ziya_fp32),
    )


def test_trunk_starts_from_the_sft_checkpoint_and_head_is_fresh(results: dict) -> None:
    init = results["init"]
    assert init["trunk_max_diff"] == 0.0
    # Every GPT weight but the vocab projection, which an RM does not have.
    assert init["trunk_params_loaded"] == init["sft_params"] - 1
    assert init["head_kept_fresh"]
    assert f"{VALUE_HEAD}.weight" in init["keys"]
    assert not [k for k in init["keys"] if k.startswith("output_layer")]


@pytest.mark.parametrize("phase", ["tp1", "tp2"])
def test_one_score_per_response_and_every_weight_gets_a_gradient(results: dict, phase: str) -> None:
    r = results[phase]
    assert len(r["scores"]) == results["batch"]["sequences"] == 16  # 4 prompts x 4 responses
    assert len(set(r["scores"])) == 16
    assert r["trunk_params_without_grad"] == []


def test_tp2_scores_and_gradients_equal_tp1(results: dict) -> None:
    tp1, tp2 = results["tp1"], results["tp2"]
    assert tp2["scores"] == pytest.approx(tp1["scores"], abs=1e-5)
    assert tp2["loss"] == pytest.approx(tp1["loss"], abs=1e-6)
    # Replicated weights: the head and the final norm get the TP=1 gradient on every TP rank.
    assert tp2["head_grad"] == pytest.approx(tp1["head_grad"], abs=1e-6)
    assert tp2["final_norm_grad"] == pytest.approx(tp1["final_norm_grad"], abs=1e-6)
    assert tp2["head_same_on_tp_ranks"]


@pytest.mark.parametrize("phase", ["tp1", "tp2"])
def test_scores_do_not_depend_on_padding_or_batch_composition(results: dict, phase: str) -> None:
    r = results[phase]
    assert r["scores_left_padded"] == pytest.approx(r["scores"], abs=1e-5)
    assert r["scores_one_prompt_at_a_time"] == pytest.approx(r["scores"], abs=1e-5)
    reversed_back = [s for i in range(4) for s in r["scores_reversed_batch"][(3 - i) * 4 :][:4]]
    assert reversed_back == pytest.approx(r["scores"], abs=1e-5)


def test_rm_learns_a_synthetic_preference_rule_at_tp2(results: dict) -> None:
    train = results["train"]
    assert train["valid_before"]["pairwise accuracy"] < 0.8
    assert train["valid_after"]["pairwise accuracy"] > 0.9
    assert train["valid_after"]["ranking accuracy"] > 0.8
    assert train["last_loss"] < 0.5 * train["first_loss"]


def test_bf16_scores_are_fp32_and_close_to_fp32_ones(results: dict) -> None:
    assert results["bf16"]["dtype"] == "torch.float32"
    assert results["bf16"]["scores"] == pytest.approx(results["tp2"]["scores"], abs=0.02)


def test_score_tool_scores_each_jsonl_line_as_the_trained_model_does(results: dict) -> None:
    tool = results["score_tool"]
    assert [row["id"] for row in tool["rows"]] == [i for i in range(4) for _ in range(4)]
    assert [row["score"] for row in tool["rows"]] == pytest.approx(tool["expected"], abs=1e-5)
