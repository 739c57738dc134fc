"""`checkpoint.optimizer_format`: the default, the error that names the key, and which format a
checkpoint is read in (chimed.json; none recorded: the old fully_reshardable). No processes are
started: tests/training/test_loop_dp.py and test_loop.py save and resume in each format."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.checkpoint import layout
from megatron_chimed.config import ConfigError, load
from megatron_chimed.config.schema import OPTIMIZER_FORMATS, CheckpointConfig
from megatron_chimed.training.checkpointing import saved_optimizer_format


def test_default_is_dp_reshardable() -> None:
    assert CheckpointConfig().optimizer_format == "dp_reshardable"
    assert load(["stage=cpt"]).checkpoint.optimizer_format == "dp_reshardable"  # the yaml too
    cfg = load(["stage=cpt", "checkpoint.optimizer_format=fully_reshardable"])
    assert cfg.checkpoint.optimizer_format == "fully_reshardable"


@pytest.mark.parametrize("bad", ["zero3", "fully_sharded_model_space", "DP_RESHARDABLE"])
def test_unknown_format_is_an_error_naming_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match=rf"checkpoint\.optimizer_format='{bad}'") as err:
        load(["stage=cpt", f"checkpoint.optimizer_format={bad}"])
    assert all(name in str(err.value) for name in OPTIMIZER_FORMATS)
    with pytest.raises(ValueError, match=r"checkpoint\.optimizer_format"):
        CheckpointConfig(optimizer_format=bad)


def test_checkpoint_format_comes_from_its_metadata(tmp_path: Path) -> None:
    assert saved_optimizer_format(tmp_path, {"optimizer_format": "dp_reshardable"}) == (
        "dp_reshardable"
    )
    # Written before the format was recorded: the format the old code always used.
    assert saved_optimizer_format(tmp_path, {"kind": "train"}) == "fully_reshardable"
    with pytest.raises(ValueError, match=f"optimizer_format in {tmp_path / layout.METADATA}"):
        saved_optimizer_format(tmp_path, {"optimizer_format": "zero3"})


def _iterations(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("iter_*"))


def test_prune_keeps_the_newest_and_latest_and_making_room_drops_partial_saves(
    tmp_path: Path,
) -> None:
    from megatron_chimed.training.checkpointing import prune

    for iteration in (2, 4, 6, 8):
        layout.write_metadata(layout.iteration_dir(tmp_path, iteration), {"iteration": iteration})
    layout.iteration_dir(tmp_path, 9).mkdir()  # a save that died half-way
    layout.write_latest(tmp_path, 6)  # e.g. iter 8 written, its pointer move lost
    prune(tmp_path, 2)
    assert _iterations(tmp_path) == ["iter_0000006", "iter_0000008", "iter_0000009"]
    # Before saving iter 10 with keep_last=1: what the prune after it removes, and garbage.
    target = layout.iteration_dir(tmp_path, 10)
    target.mkdir()
    prune(tmp_path, 0, spare=target)
    assert _iterations(tmp_path) == ["iter_0000006", "iter_0000010"]  # latest is never removed
