"""The LR schedule: built from the config, and restored on resume onto this run's schedule."""

from __future__ import annotations

import logging

import pytest

from megatron_chimed.config.schema import OptimConfig
from megatron_chimed.training.optim import build_scheduler, restore_schedule

OPTIM = OptimConfig(lr=1e-3, min_lr_ratio=0.1, warmup_iters=10, decay_style="linear")


class ParamGroups:
    """All the scheduler touches of an optimizer: its param groups' lr and weight decay."""

    def __init__(self) -> None:
        self.param_groups: list[dict] = [{}]

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]


def linear_lr(step: int, train_iters: int) -> float:
    """OPTIM's LR at `step` of a run of `train_iters`: warm-up, then linear to 10%."""
    if step <= OPTIM.warmup_iters:
        return OPTIM.lr * step / OPTIM.warmup_iters
    done = (step - OPTIM.warmup_iters) / (train_iters - OPTIM.warmup_iters)
    return OPTIM.lr * (0.1 + 0.9 * (1 - done))


def saved_at(step: int, train_iters: int) -> dict:
    """The scheduler state a checkpoint of a `train_iters` run holds after `step` steps."""
    scheduler = build_scheduler(ParamGroups(), OPTIM, train_iters)
    scheduler.step(increment=step)
    return scheduler.state_dict()


def test_a_resume_with_more_train_iters_follows_the_new_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = saved_at(60, train_iters=100)
    optimizer = ParamGroups()
    scheduler = build_scheduler(optimizer, OPTIM, train_iters=200)
    with caplog.at_level(logging.INFO, logger="megatron_chimed.train"):
        changes = restore_schedule(scheduler, saved)
    assert scheduler.num_steps == 60  # the checkpoint's position ...
    assert (scheduler.lr_decay_steps, scheduler.wd_incr_steps) == (200, 200)  # ... our schedule
    assert optimizer.lr == pytest.approx(linear_lr(60, 200))  # 7.3e-4, not the old 5.5e-4
    assert linear_lr(60, 200) != pytest.approx(linear_lr(60, 100))
    assert changes == [
        "lr_decay_steps 100 -> 200 (training.train_iters or optim.decay_iters)",
        "wd_incr_steps 100 -> 200 (training.train_iters or optim.decay_iters)",
    ]
    said = [r.getMessage() for r in caplog.records if "LR schedule" in r.getMessage()]
    assert said == [
        "resuming on this run's LR schedule, not the checkpoint's: " + "; ".join(changes)
    ]
    scheduler.step(increment=140)  # the run's last step: at the minimum, not before
    assert optimizer.lr == pytest.approx(1e-4)
    assert scheduler.override_opt_param_scheduler is False  # only for the restore


def test_an_unchanged_schedule_resumes_silently_where_it_was(
    caplog: pytest.LogCaptureFixture,
) -> None:
    optimizer = ParamGroups()
    scheduler = build_scheduler(optimizer, OPTIM, train_iters=100)
    with caplog.at_level(logging.INFO, logger="megatron_chimed.train"):
        assert restore_schedule(scheduler, saved_at(60, train_iters=100)) == []
    assert (scheduler.num_steps, optimizer.lr) == (60, pytest.approx(linear_lr(60, 100)))
    assert not [r for r in caplog.records if "LR schedule" in r.getMessage()]
