"""The training line: values, then the time left; metrics.jsonl keeps values only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from megatron_chimed.training.metrics import MetricsLogger, eta


@pytest.mark.parametrize(
    ("steps", "step_s", "shown"),
    [(0, 1.0, "0m00s"), (25, 10.0, "4m10s"), (125, 60.0, "2h05m"), (1000, 97.2, "1d03h")],
)
def test_eta(steps: int, step_s: float, shown: str) -> None:
    assert eta(steps, step_s) == shown


def test_train_line_ends_with_the_time_left(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    metrics = MetricsLogger(tmp_path, enabled=True, tensorboard=False, total_iters=100)
    with caplog.at_level(logging.INFO, logger="megatron_chimed.train"):
        metrics.log("train", 40, {"lm_loss": 2.5, "step_s": 2.0})
        metrics.log("valid", 40, {"lm_loss": 2.6})
    metrics.close()
    assert caplog.messages == [
        "train iter 40 | lm_loss 2.5000 | step_s 2.0000 | ETA 2m00s",
        "valid iter 40 | lm_loss 2.6000",
    ]
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {k: v for k, v in first.items() if k != "time"} == {
        "split": "train", "iteration": 40, "lm_loss": 2.5, "step_s": 2.0,
    }  # fmt: skip
