"""Packed rows through the tiny megatron GPTModel: `isolated` equals one-by-one, `concat` does
not, and the SFT loss is the hand-computed loss over response tokens (one 1-process launch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, tiny_ziya: Path) -> dict:
    out = tmp_path_factory.mktemp("sft_isolation") / "results.json"
    return run_worker("tests/stages/sft_isolation.py", 1, out, "--tokenizer", str(tiny_ziya))


def test_three_samples_share_one_row(results: dict) -> None:
    assert len(results["lengths"]) == 3 and sum(results["lengths"]) <= 257
    assert results["isolated_positions_restart"] == [0, 0, 0]
    assert results["concat_positions_restart"][1:] == results["lengths"][0:1] + [
        sum(results["lengths"][:2])
    ]


def test_isolated_losses_equal_one_by_one(results: dict) -> None:
    assert results["isolated"] == pytest.approx(results["alone"], abs=1e-5)


def test_concat_losses_differ_after_the_first_sample(results: dict) -> None:
    # The first sample sees nothing before it either way; the others see earlier samples.
    assert results["concat"][0] == pytest.approx(results["alone"][0], abs=1e-5)
    for packed, alone in zip(results["concat"][1:], results["alone"][1:]):
        assert abs(packed - alone) > 1e-2
    # An explicit causal mask and the model's default one agree: the mask argument is used.
    assert results["concat_default_mask"] == pytest.approx(results["concat"], abs=1e-6)


def test_sft_loss_is_the_response_tokens_only(results: dict) -> None:
    loss_sum, count = results["sft_loss"]
    hand_sum, hand_count = results["hand_loss"]
    assert count == hand_count
    assert loss_sum == pytest.approx(hand_sum, rel=1e-5)
    assert results["eos_targets"] == 3  # each sample's `</s>` is supervised
