"""The main job: `chimed pipeline experiment=demo` on the bundled tiny default, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_chimed.config.schema import STEP_NAMES
from megatron_chimed.plot import read_metrics
from megatron_chimed.testing.workers import ROOT


def chimed(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "megatron_chimed.cli", *args],
        capture_output=True, text=True, env=env, timeout=1800, cwd=ROOT,
    )  # fmt: skip


pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("pipeline") / "demo"
    proc = chimed("pipeline", "experiment=demo", f"run_dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return run_dir, proc


def test_every_step_ran_and_is_in_the_summary(demo) -> None:
    run_dir, _ = demo
    summary = (run_dir / "summary.md").read_text()
    for step in STEP_NAMES:
        assert (run_dir / "steps" / f"{step}.json").is_file(), step
        assert f"| {step} |" in summary
    assert "not run" not in summary
    assert (run_dir / "loss_curves.png").stat().st_size > 10_000
    for step in ("cpt", "sft", "rm", "rs", "eval"):
        assert (run_dir / "logs" / f"{step}.log").stat().st_size > 0


@pytest.mark.parametrize("stage", ["cpt", "sft"])
def test_language_model_stages_learn(demo, stage: str) -> None:
    run_dir, _ = demo
    train = read_metrics(run_dir / stage / "metrics.jsonl")["train"]
    losses = [train[i]["lm_loss"] for i in sorted(train)]
    assert losses[-1] < losses[0] - 0.5, losses


def test_reward_model_and_rejection_sampling_reports(demo) -> None:
    run_dir, _ = demo
    report = json.loads((run_dir / "rm" / "rm_test_report.json").read_text())
    assert 0.0 <= report["pairwise_accuracy"] <= 1.0
    assert (run_dir / "export" / "model.safetensors.index.json").is_file()
    assert list((run_dir / "eval").glob("*.json")), "no evaluation result"


def test_rerun_skips_every_completed_step(demo) -> None:
    run_dir, _ = demo
    before = (run_dir / "steps" / "cpt.json").stat().st_mtime_ns
    proc = chimed("pipeline", "experiment=demo", f"run_dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("done before, skipped") == len(STEP_NAMES)
    assert (run_dir / "steps" / "cpt.json").stat().st_mtime_ns == before
