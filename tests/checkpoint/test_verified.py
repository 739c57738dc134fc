"""checkpoint/verified.py: which checkpoint a start reads when files fail their manifest
(checkpoint.on_corrupt), on folders made here (manifest + files, no torch_dist shards needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from megatron_chimed.checkpoint import CheckpointError, layout, manifest, verified


def _checkpoint(root: Path, iteration: int) -> Path:
    ckpt = layout.iteration_dir(root, iteration)
    ckpt.mkdir(parents=True)
    (ckpt / "__0_0.distcp").write_bytes(bytes([iteration]) * 4096)
    layout.write_metadata(ckpt, {"kind": "train", "iteration": iteration})
    manifest.write(ckpt, manifest.WriteLog(), {})
    layout.write_latest(root, iteration)
    return ckpt


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100] ^= 0x10
    path.write_bytes(data)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for iteration in (2, 4, 6):
        _checkpoint(tmp_path / "checkpoints", iteration)
    return tmp_path / "checkpoints"


def test_sound_latest_is_read(root: Path) -> None:
    assert verified.resume_point(root, "fallback") == root / "iter_0000006"
    assert verified.resume_point(root.parent / "none", "fallback") is None


def test_corrupt_latest_falls_back_with_one_warning_naming_the_file(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = root / "iter_0000006" / "__0_0.distcp"
    _flip(bad)
    with caplog.at_level(logging.WARNING, logger="megatron_chimed.train"):
        assert verified.resume_point(root, "fallback") == root / "iter_0000004"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{bad}: checksum ")
    assert warnings[0].endswith("(corrupted): falling back to iter_0000004 "
                                "(checkpoint.on_corrupt=fallback)")  # fmt: skip


def test_refuse_names_the_file(root: Path) -> None:
    bad = root / "iter_0000006" / "__0_0.distcp"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as err:
        verified.resume_point(root, "refuse")
    assert str(err.value) == (
        f"{bad}: 1000 bytes, manifest.json records 4096 (truncated?) (checkpoint.on_corrupt=refuse)"
    )


def test_no_sound_checkpoint_left_is_an_error(root: Path) -> None:
    for iteration in (2, 4, 6):
        (layout.iteration_dir(root, iteration) / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=r"iter_0000002/__0_0\.distcp: missing .*; no "
                       r"earlier complete checkpoint in "):  # fmt: skip
        verified.resume_point(root, "fallback")


def test_checkpoint_load_of_a_root_falls_back_of_a_folder_does_not(root: Path) -> None:
    _flip(root / "iter_0000006" / "__0_0.distcp")
    assert verified.load_point(root, "fallback") == root / "iter_0000004"
    assert verified.load_point(root / "iter_0000004", "fallback") == root / "iter_0000004"
    with pytest.raises(CheckpointError, match=r"checkpoint\.load names this folder"):
        verified.load_point(root / "iter_0000006", "fallback")
