"""The rm stage on the shared loop at TP=2: one 2-process launch (reward_stage.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from megatron_chimed.config.schema import OptimConfig, TrainingConfig
from megatron_chimed.config.stages import RMConfig
from megatron_chimed.stages.rm import epoch_schedule, rm_schedule
from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, tiny_ziya_fp32: Path) -> dict:
    tmp = tmp_path_factory.mktemp("reward_stage")
    return run_worker(
        "tests/stages/reward_stage.py",
        2,
        tmp / "results.json",
        "--tmp",
        str(tmp),
        "--tokenizer",
        str(tiny_ziya_fp32),
    )


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        (3800, (950, 29)),  # the paper: CMD (Reward) train, 2 epochs of batch 8; 3% = 28.5
        (60, (15, 5)),  # the bundled sample: warm-up floor of 5
        (3, (1, 5)),
    ],
)
def test_paper_schedule_from_data_size(prompts: int, expected: tuple[int, int]) -> None:
    assert epoch_schedule(RMConfig(), prompts, 8) == expected


def test_schedule_is_derived_without_touching_the_config() -> None:
    training = TrainingConfig(global_batch_size=8, train_iters=1000, eval_interval=5)
    optim = OptimConfig(warmup_iters=0)
    t, o = rm_schedule(RMConfig(), training, optim, train_prompts=60, valid_prompts=17)
    assert (t.train_iters, o.warmup_iters, t.eval_iters) == (15, 5, 2)
    assert (training.train_iters, optim.warmup_iters, training.eval_iters) == (1000, 0, 10)
    with pytest.raises(ValueError, match="v.jsonl: 7 prompts, fewer than"):
        rm_schedule(RMConfig(), training, optim, 60, 7, valid_name="v.jsonl")


def test_every_configurable_pairing_is_implemented() -> None:
    from megatron_chimed.config.stages import RM_PAIRINGS
    from megatron_chimed.reward.batch import PAIRINGS

    assert set(RM_PAIRINGS) == set(PAIRINGS)


def test_unknown_pairing_in_config_is_named() -> None:
    with pytest.raises(ValueError, match="rm.eval_pairing='pairs'"):
        RMConfig(eval_pairing="pairs")


def test_stage_sets_steps_warmup_and_eval_batches_from_the_data(results: dict) -> None:
    assert results["train_iters"] == 15  # 60 prompts x 2 epochs / 8
    assert results["warmup_iters"] == 5
    assert results["eval_iters"] == 1  # 10 valid prompts: one whole global batch of 8
    assert results["iterations_run"] == 15
    assert results["config_untouched"]


def test_lr_follows_warmup_then_cosine_to_ten_percent(results: dict) -> None:
    lrs = {m["iteration"]: m["lr"] for m in results["metrics"] if m["split"] == "train"}
    assert lrs[5] == pytest.approx(5e-6)
    assert lrs[15] == pytest.approx(5e-7)
    assert lrs[5] > lrs[10] > lrs[15]


def test_each_eval_logs_loss_pairwise_and_ranking_accuracy(results: dict) -> None:
    valid = [m for m in results["metrics"] if m["split"] == "valid"]
    assert [m["iteration"] for m in valid] == [5, 10, 15]
    for m in valid:
        assert 0.0 <= m["pairwise_accuracy"] <= 1.0 and 0.0 <= m["ranking_accuracy"] <= 1.0
        # all-pairs over 8 prompts x 6 pairs: accuracy is a multiple of 1/48
        assert m["pairwise_accuracy"] * 48 == pytest.approx(round(m["pairwise_accuracy"] * 48))
        assert m["rm_loss"] == pytest.approx(0.693, abs=0.05)  # near log 2: 15 steps at 5e-6


def test_value_head_trains_and_stays_replicated(results: dict) -> None:
    assert results["head_moved"] > 0
    assert results["head_same_on_tp_ranks"]


def test_test_split_report_is_written_as_json_after_training(results: dict) -> None:
    report = results["test_report"]
    assert report["prompts"] == 10 and report["pairing"] == "all"
    assert report["pairwise_accuracy"] * 60 == pytest.approx(
        round(report["pairwise_accuracy"] * 60)
    )
    assert set(report) >= {"rm_loss", "pairwise_accuracy", "ranking_accuracy"}


def test_training_checkpoint_reloads_into_a_fresh_rm(results: dict) -> None:
    assert results["checkpoint"] == {"name": "iter_0000015", "stage": "RewardStage"}
    assert results["scores_reloaded"] == pytest.approx(results["scores_trained"], abs=1e-6)
    assert len(results["scores_trained"]) == 40  # 10 test prompts x 4 responses


def test_without_a_test_split_the_stage_runs_and_says_so_once(
    tiny_ziya: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # In process, no model: the stage's data and schedule are built before any rank starts.
    from megatron_chimed import config
    from megatron_chimed.stages.rm import TEST_REPORT, RewardStage
    from megatron_chimed.tokenizer import ZiyaTokenizer

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the sample's relative paths
    monkeypatch.delenv("CHIMED_REWARD_DATA", raising=False)
    cfg = config.load(
        ["stage=rm", "data=reward_sample", "training=tiny", "data.test=null",
         f"run_dir={tmp_path}"]
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="megatron_chimed.stages.rm"):
        stage = RewardStage(cfg, ZiyaTokenizer(tiny_ziya))
    assert sorted(stage.splits) == ["train", "valid"]
    assert [len(stage.splits[s]) for s in ("train", "valid")] == [60, 10]
    train, valid, test = stage.datasets((120, 8, 8))
    assert (valid is stage.splits["valid"], test) == (True, None)
    assert stage.test_report(model=None) == {}  # nothing to score, nothing written
    assert not (tmp_path / TEST_REPORT).exists()
    said = [r.getMessage() for r in caplog.records if "data.test" in r.getMessage()]
    assert said == [f"rm: data.test is not set: no test split, no test metrics ({TEST_REPORT})"]
