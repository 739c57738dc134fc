"""Exact resume under data parallelism (TP=2 x DP=2, 4 gloo processes) and at a new DP size,
in the default optimizer format (dp_reshardable) and from an old-format checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed

N = 20  # tests/training/train_dp.py


@pytest.fixture(scope="module")
def results(tiny_ziya_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from megatron_chimed.data.indexed import output_prefix, preprocess
    from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA

    tmp = tmp_path_factory.mktemp("train_dp")
    preprocess(sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl")), tmp / "sample",
               tiny_ziya_fp32, progress=False)  # fmt: skip
    args = ["--tmp", str(tmp), "--data", output_prefix(tmp / "sample", "text"),
            "--tokenizer", str(tiny_ziya_fp32)]  # fmt: skip
    dp2 = run_worker("tests/training/train_dp.py", 4, tmp / "dp2.json", *args, "--phase", "dp2")
    dp1 = run_worker("tests/training/train_dp.py", 2, tmp / "dp1.json", *args, "--phase", "dp1")
    return {"dp2": dp2, "dp1": dp1}


def test_dp2_resume_is_bitwise_identical(results: dict) -> None:
    dp2 = results["dp2"]
    assert dp2["data_parallel"] == 2
    assert dp2["saved_as"]["half"] == {
        "optimizer_format": "dp_reshardable",  # the default
        "tensor_parallel": 2,
        "data_parallel": 2,
    }
    assert dp2["params_equal"]
    assert dp2["half"] == dp2["full"]  # every iteration's loss, the resumed half included
    assert len(dp2["full"]) == N
    # AdamW's step came back from the checkpoint, not reset at the resume.
    assert dp2["adam_steps"]["half"] == dp2["adam_steps"]["full"] == [N]


def test_old_format_checkpoint_resumes_bitwise_identical(results: dict) -> None:
    dp2 = results["dp2"]
    nothing = {"optimizer_format": None, "tensor_parallel": None, "data_parallel": None}
    assert dp2["saved_as"]["old"] == nothing  # as chimed.json was before the option
    assert dp2["old_params_equal"]
    # The run that wrote it logged the first half.
    assert dp2["old"] == {k: v for k, v in dp2["full"].items() if int(k) > N // 2}
    assert dp2["adam_steps"]["old"] == [N]
    # Read as written (fully_reshardable); saved from then on in the configured format.
    assert dp2["old_saves_as"]["optimizer_format"] == "dp_reshardable"


def test_resume_at_another_dp_size_keeps_the_data_order(results: dict) -> None:
    dp1, full = results["dp1"], results["dp2"]["full"]
    assert dp1["data_parallel"] == 1
    assert dp1["consumed"] == results["dp2"]["consumed"]
    assert dp1["adam_steps"] == {"dp_change": [N], "old": [N]}
    # One line, for the checkpoint that recorded its DP size; the old one did not.
    assert len(dp1["log"]) == 1
    assert "(dp_reshardable optimizer state, saved at DP=2) at DP=1" in dp1["log"][0]
    # The run saved in the other format: a checkpoint that loads back exactly.
    assert dp1["converted_as"] == {
        "optimizer_format": "fully_reshardable",
        "tensor_parallel": 2,
        "data_parallel": 1,
    }
    assert dp1["converted_reloads"]
    for name in ("resumed", "resumed_old"):
        resumed = {int(k): v for k, v in dp1[name].items() if int(k) > N // 2}
        assert sorted(resumed) == list(range(N // 2 + 1, N + 1)), name
        # The same samples in the same order; only the order of the gradient sums differs.
        for iteration, loss in resumed.items():
            assert loss == pytest.approx(full[str(iteration)], abs=2e-4), (name, iteration)
