"""training/resume_checks.py: a resume that would read other samples is refused naming the key
and both values, another seed is a warning, and saved param groups take this run's schedule
fields (another optim.lr no longer fails in megatron with a KeyError on a tuple)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from megatron_chimed.checkpoint import CheckpointError
from megatron_chimed.config.schema import RunConfig
from megatron_chimed.training import resume_checks


def _saved(**training) -> dict:
    config = {"seed": 1234, "training": {"seq_length": 64, "global_batch_size": 8, **training}}
    return {"kind": "train", "config": config}


def _run(seq: int = 64, gb: int = 8, seed: int = 1234) -> RunConfig:
    cfg = RunConfig(seed=seed)
    cfg.training.seq_length, cfg.training.global_batch_size = seq, gb
    return cfg


@pytest.mark.parametrize(
    ("run", "key", "new", "old"),
    [(_run(seq=128), "training.seq_length", 128, 64),
     (_run(gb=16), "training.global_batch_size", 16, 8)],
)  # fmt: skip
def test_another_shape_of_samples_is_refused(
    tmp_path: Path, run: RunConfig, key: str, new: int, old: int
) -> None:
    with pytest.raises(CheckpointError) as err:
        resume_checks.check(tmp_path, _saved(), run)
    assert str(err.value) == (
        f"{key}={new} differs from {old} in {tmp_path / 'chimed.json'}: the data position "
        f"counts samples of this shape; resume with {key}={old}, or start a new run_dir with "
        f"checkpoint.load={tmp_path} (weights only)"
    )


def test_another_seed_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="megatron_chimed.train"):
        resume_checks.check(tmp_path, _saved(), _run(seed=7))
        resume_checks.check(tmp_path, _saved(), _run())
        resume_checks.check(tmp_path, {"kind": "train"}, _run(seq=128))  # nothing recorded
    assert [r.getMessage() for r in caplog.records] == [
        f"seed=7 differs from 1234 in {tmp_path / 'chimed.json'}: the RNG state resumes from "
        "the checkpoint, the data order follows the new seed"
    ]


def test_saved_param_groups_take_this_runs_schedule_fields() -> None:
    ours = [
        {"wd_mult": 1.0, "lr_mult": 1.0, "max_lr": 4e-3, "min_lr": 4e-4, "params": [0]},
        {"wd_mult": 0.0, "lr_mult": 1.0, "max_lr": 4e-3, "min_lr": 4e-4, "params": [1]},
    ]
    loaded = {"optimizer": {"param_groups": [
        {"wd_mult": 0.0, "lr_mult": 1.0, "max_lr": 2e-3, "min_lr": 2e-4, "step": 3},
        {"wd_mult": 1.0, "lr_mult": 1.0, "max_lr": 2e-3, "min_lr": 2e-4, "step": 3},
    ]}}  # fmt: skip
    resume_checks.adopt_param_groups(loaded, SimpleNamespace(param_groups=ours))
    assert loaded["optimizer"]["param_groups"] == [
        {"wd_mult": 0.0, "lr_mult": 1.0, "max_lr": 4e-3, "min_lr": 4e-4, "step": 3},
        {"wd_mult": 1.0, "lr_mult": 1.0, "max_lr": 4e-3, "min_lr": 4e-4, "step": 3},
    ]
