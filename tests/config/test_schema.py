"""config/schema.py validation of `training` and `checkpoint`: a value the loop would divide by
(or that does nothing) is an error naming the key; 0 means "none on the way" for
checkpoint.save_interval and "keep all" for checkpoint.keep_last, as the comments say."""

from __future__ import annotations

import pytest

from megatron_chimed.config import ConfigError, load
from megatron_chimed.config.schema import CheckpointConfig, TrainingConfig


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.log_interval=0", "training.log_interval=0 must be >= 1"),
        ("training.micro_batch_size=0", "training.micro_batch_size=0 must be >= 1"),
        ("training.global_batch_size=0", "training.global_batch_size=0 must be >= 1"),
        ("training.train_iters=0", "training.train_iters=0 must be >= 1"),
        ("training.seq_length=-1", "training.seq_length=-1 must be >= 1"),
        ("training.eval_interval=-5", "training.eval_interval=-5 must be >= 0"),
        ("training.exit_after=0", "training.exit_after=0 must be >= 1 (or null)"),
        ("checkpoint.save_interval=-1",
         "checkpoint.save_interval=-1 must be >= 0 (0: only at the end)"),
        ("checkpoint.keep_last=-1", "checkpoint.keep_last=-1 must be >= 1 (null or 0: keep all)"),
        ("checkpoint.on_corrupt=ignore",
         "checkpoint.on_corrupt='ignore': expected ('fallback', 'refuse')"),
    ],
)  # fmt: skip
def test_values_the_loop_cannot_use_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(["stage=cpt", "training=tiny", override])
    assert str(err.value) == message


def test_zero_save_interval_and_keep_last_are_accepted() -> None:
    cfg = load(["stage=cpt", "checkpoint.save_interval=0", "checkpoint.keep_last=0"])
    assert (cfg.checkpoint.save_interval, cfg.checkpoint.keep_last) == (0, 0)
    assert cfg.checkpoint.on_corrupt == "fallback"  # the default, in the yaml too
    assert CheckpointConfig().on_corrupt == "fallback"


def test_a_derived_schedule_is_checked_too() -> None:
    import dataclasses

    with pytest.raises(ValueError, match=r"^training\.train_iters=0 must be >= 1$"):
        dataclasses.replace(TrainingConfig(), train_iters=0)
