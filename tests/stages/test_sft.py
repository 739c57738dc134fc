"""SFT on the shared training loop at TP=2 (one 2-process launch; tests/stages/sft_train.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed

N, EXIT = 120, 61  # tests/stages/sft_train.py


@pytest.fixture(scope="module")
def results(tiny_ziya_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from megatron_chimed.convert import hf_to_megatron

    tmp = tmp_path_factory.mktemp("sft_train")
    converted = hf_to_megatron(tiny_ziya_fp32, tmp / "converted", progress=False)
    return run_worker(
        "tests/stages/sft_train.py", 2, tmp / "results.json", "--tmp", str(tmp),
        "--tokenizer", str(tiny_ziya_fp32), "--converted", str(converted),
    )  # fmt: skip


def test_sft_loss_falls(results: dict) -> None:
    loss = results["losses"]["full"]
    assert results["full"] == ["done", N]
    first = sum(loss[str(i)] for i in (1, 2, 3)) / 3
    last = sum(loss[str(i)] for i in (N - 2, N - 1, N)) / 3
    assert first > 6.0  # ln(2000) = 7.6 for the random tiny model
    assert last < 0.2  # four answers memorised


def test_trained_prompts_get_their_trained_answers(results: dict) -> None:
    answers = results["answers"]
    assert len(answers) == 4 and results["trained_eos"]
    # Every answer exact up to `</s>`, where generation stopped: the model learned to stop.
    assert all(a["exact"] for a in answers), answers


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(results: dict) -> None:
    assert results["half"] == ["exit", EXIT, "done", N]
    assert results["consumed_at_exit"] % results["rows"] != 0  # the exit is in mid-epoch
    assert results["params_equal"]
    assert results["losses"]["half"] == results["losses"]["full"]
