"""The RS resume guarantee with the dynamic engine: a shard's sampled answers depend on the
round's seed, the shard and the prompt, not on the TP or DP size, the engine, or whether the
shard was redone after a kill (one 2-process launch: generate_dp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tiny_ziya_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from megatron_chimed.convert import hf_to_megatron

    tmp = tmp_path_factory.mktemp("rs_generate")
    converted = hf_to_megatron(tiny_ziya_fp32, tmp / "converted", progress=False)
    return run_worker(
        "tests/rejection_sampling/generate_dp.py", 2, tmp / "results.json", "--tmp", str(tmp),
        "--ckpt", str(converted), "--tokenizer", str(tiny_ziya_fp32),
    )  # fmt: skip


def test_answers_are_the_same_at_dp2_and_dp1_with_either_engine(results: dict) -> None:
    reference = results["tp1_dynamic"]
    assert [row["id"] for row in reference] == [0, 1, 2, 3, 4]
    assert all(len(row["answers"]) == 3 for row in reference)
    for name in ("tp1_static", "tp2_dynamic", "tp2_static"):
        assert results[name] == reference, name


def test_a_redone_shard_gets_the_same_answers(results: dict) -> None:
    assert results["tp1_redone"] == results["tp1_dynamic"]
    assert results["tp2_redone"] == results["tp2_dynamic"]


def test_the_samples_of_a_prompt_differ(results: dict) -> None:
    rows = results["tp1_dynamic"]
    assert sum(len(set(row["answers"])) > 1 for row in rows) >= 4
