"""Exact resume under data parallelism (TP=2 x DP=2, 4 gloo processes) and at a new DP size."""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed import run_worker

N = 20  # tests/workers/train_dp.py


@pytest.fixture(scope="module")
def results(tiny_ziya_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from megatron_chimed.data.indexed import output_prefix, preprocess
    from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA

    tmp = tmp_path_factory.mktemp("train_dp")
    preprocess(sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl")), tmp / "sample",
               tiny_ziya_fp32, progress=False)  # fmt: skip
    args = ["--tmp", str(tmp), "--data", output_prefix(tmp / "sample", "text"),
            "--tokenizer", str(tiny_ziya_fp32)]  # fmt: skip
    dp2 = run_worker("tests/workers/train_dp.py", 4, tmp / "dp2.json", *args, "--phase", "dp2")
    dp1 = run_worker("tests/workers/train_dp.py", 2, tmp / "dp1.json", *args, "--phase", "dp1")
    return {"dp2": dp2, "dp1": dp1}


def test_dp2_resume_is_bitwise_identical(results: dict) -> None:
    dp2 = results["dp2"]
    assert dp2["data_parallel"] == 2
    assert dp2["params_equal"]
    assert dp2["half"] == dp2["full"]  # every iteration's loss, the resumed half included
    assert len(dp2["full"]) == N


def test_resume_at_another_dp_size_keeps_the_data_order(results: dict) -> None:
    dp1, full = results["dp1"], results["dp2"]["full"]
    assert dp1["data_parallel"] == 1
    assert dp1["consumed"] == results["dp2"]["consumed"]
    resumed = {int(k): v for k, v in dp1["resumed"].items() if int(k) > N // 2}
    assert sorted(resumed) == list(range(N // 2 + 1, N + 1))
    # The same samples in the same order; only the order of the gradient sums differs.
    for iteration, loss in resumed.items():
        assert loss == pytest.approx(full[str(iteration)], abs=2e-4), iteration
