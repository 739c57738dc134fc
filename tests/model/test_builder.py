"""The tiny GPTModel at TP=1 and TP=2 over gloo: one 2-process launch, many checks."""

from __future__ import annotations

import pytest

from megatron_chimed.testing.tiny_ziya import TINY
from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("model")
    return run_worker(
        "tests/model/model_checks.py", 2, tmp / "results.json", "--ckpt", str(tmp / "ckpt")
    )


@pytest.mark.parametrize("phase", ["tp1", "tp2", "bf16"])
def test_forward_backward_is_complete(results: dict, phase: str) -> None:
    r = results[phase]
    assert r["logits_finite"]
    assert r["params"] > 0
    assert r["params_without_grad"] == []
    assert r["nonfinite_grads"] == []
    assert r["zero_grads"] == []


def test_logits_shape_is_padded_vocab_split_by_tp(results: dict) -> None:
    padded = TINY.padded_vocab_size(2)
    assert padded == 2048 and TINY.vocab_size == 2000
    assert results["tp1"]["logits_shape"] == [2, 32, TINY.padded_vocab_size(1)]
    assert results["tp2"]["logits_shape"] == [2, 32, padded // 2]
    assert results["tp2"]["local_vocab_rows"] == padded // 2


def test_data_parallel_is_derived_from_world_size(results: dict) -> None:
    assert results["tp1"]["data_parallel"] == 2
    assert results["tp2"]["data_parallel"] == 1


def test_tp2_loss_equals_tp1_loss(results: dict) -> None:
    assert results["tp1"]["loss"] == pytest.approx(results["tp2"]["loss"], abs=1e-5)


def test_bf16_weights_are_bf16_and_loss_is_close(results: dict) -> None:
    assert results["bf16"]["dtypes"] == ["torch.bfloat16"]
    assert results["bf16"]["loss"] == pytest.approx(results["tp2"]["loss"], abs=0.2)
