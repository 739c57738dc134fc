"""The rs stage at TP=2 on the tiny model: one 2-process launch (tests/stages/rs_round.py).

The worker trains a policy that answers GOOD or BAD about equally often and a reward model
that prefers GOOD (it holds the marker string), then runs rejection sampling: stopped after
phase (b), one generation shard lost and redone, resumed to the end of round 0, round 1 up to
its scores, and an uninterrupted run to compare with.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tiny_ziya_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from megatron_chimed.convert import hf_to_megatron

    tmp = tmp_path_factory.mktemp("rs")
    converted = hf_to_megatron(tiny_ziya_fp32, tmp / "converted", progress=False)
    return run_worker(
        "tests/stages/rs_round.py", 2, tmp / "results.json", "--tmp", str(tmp),
        "--tokenizer", str(tiny_ziya_fp32), "--converted", str(converted),
    )  # fmt: skip


def marker_fraction(results: dict, round_name: str) -> float:
    answers = [a for row in results["scored"][round_name] for a in row["answers"]]
    assert len(answers) == 8 * 8
    return sum(results["marker"] in a for a in answers) / len(answers)


def test_fine_tuned_policy_earns_more_reward_than_the_sft_policy(results: dict) -> None:
    before, after = (results["report"][f"round_{i}"]["score"] for i in (0, 1))
    assert after["mean"] > before["mean"] + 1.0  # measured: -0.16 -> 2.18
    assert marker_fraction(results, "round_0") == pytest.approx(0.5, abs=0.25)
    assert marker_fraction(results, "round_1") >= 0.9


def test_top_1_of_each_prompt_is_kept_with_its_score(results: dict) -> None:
    kept = results["kept"]["resumed"]
    best = {row["id"]: max(row["scores"]) for row in results["scored"]["round_0"]}
    assert sorted(r["prompt_id"] for r in kept) == list(range(8))
    assert all(r["score"] == best[r["prompt_id"]] for r in kept)
    assert all(r["conversations"][1]["value"] == results["good"] for r in kept)


def test_report_has_every_phase_and_best_of_n_gain(results: dict) -> None:
    round0 = results["report"]["round_0"]
    assert list(round0) == ["prompts", "generate", "score", "select", "train"]
    score, select = round0["score"], round0["select"]
    assert score["best_of_n_gain"] == pytest.approx(score["mean_best"] - score["mean"])
    assert score["best_of_n_gain"] > 1.0  # half the answers are BAD
    assert select["mean_kept"] == pytest.approx(score["mean_best"])  # k=1, no blank answer
    assert round0["train"]["iterations"] == 30
    iterations = [m["iteration"] for m in results["train_metrics"] if m["split"] == "train"]
    assert iterations[-1] == 30


def test_stopped_after_generation_the_rerun_does_not_redo_prompts_or_done_shards(
    results: dict,
) -> None:
    assert [results[k] for k in ("first", "second", "third", "round1")] == [
        "stopped", "stopped", "done", "stopped"
    ]  # fmt: skip
    first, second, third = (results["snapshots"][k] for k in ("first", "second", "third"))
    assert first["prompts"] == second["prompts"] == third["prompts"]  # mtimes and contents
    shard0, shard1 = "shard_00000.jsonl", "shard_00001.jsonl"
    assert first["generate"][shard0] == second["generate"][shard0]
    # The lost shard was generated again, to the same answers (seeded per round and shard).
    assert second["generate"][shard1][0] != first["generate"][shard1][0]
    assert second["generate"][shard1][1] == first["generate"][shard1][1]
    assert second["generate"] == third["generate"]
    events = [(e["round"], e["phase"], e["event"]) for e in results["phase_log"]]
    assert events.count((0, "prompts", "start")) == 1
    assert events.count((0, "generate", "start")) == 2  # first job, and the lost shard
    assert events.count((0, "generate", "skip")) == 1  # the resumed job
    assert events.count((0, "score", "start")) == 1


def test_resumed_run_keeps_what_the_uninterrupted_run_keeps(results: dict) -> None:
    assert results["uninterrupted"] == "stopped"
    assert results["kept"]["resumed"] == results["kept"]["uninterrupted"]
