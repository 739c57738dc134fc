"""training/save_space.py: the free-space check before a save (with a faked small file system),
the prune it may do first, and a full disk during the write as one line with no partial folder.
tests/training/test_checkpointing_integrity.py runs both through real saves."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from megatron_chimed.checkpoint import CheckpointError, manifest
from megatron_chimed.training import save_space

GIB = 2**30


@pytest.fixture
def free(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A file system with `free[0]` bytes free, whatever the disk has."""
    left = [0]
    real = shutil.disk_usage

    def fake(path):
        usage = real(path)
        return type(usage)(usage.total, usage.total - left[0], left[0])

    monkeypatch.setattr(save_space.shutil, "disk_usage", fake)
    return left


def test_short_of_space_is_one_line_naming_the_folder_and_sizes(
    tmp_path: Path, free: list[int]
) -> None:
    target = tmp_path / "checkpoints" / "iter_0000010"
    free[0] = 3 * GIB
    save_space.ensure_room(target, 2 * GIB, None)  # enough: nothing happens
    free[0] = GIB // 2
    with pytest.raises(CheckpointError) as err:
        save_space.ensure_room(target, int(24.5 * GIB), None)
    mount = save_space._mount(tmp_path)
    assert str(err.value) == (
        f"{target}: no space left on {mount} (needed ~24.5 GiB, free 0.5 GiB)"
    )


def test_pruning_first_when_it_makes_room(tmp_path: Path, free: list[int]) -> None:
    free[0] = GIB
    pruned = []

    def make_room() -> None:
        pruned.append(True)
        free[0] = 4 * GIB

    save_space.ensure_room(tmp_path / "iter_0000010", 2 * GIB, make_room)
    assert pruned == [True]


def test_a_full_disk_during_the_write_removes_the_folder(tmp_path: Path, free: list[int]) -> None:
    target = tmp_path / "iter_0000010"
    target.mkdir()
    (target / "__0_0.distcp").write_bytes(b"half a shard")
    free[0] = 0
    writes = manifest.WriteLog()
    writes.failed(OSError(errno.ENOSPC, "No space left on device"))
    # What megatron raises: the worker's OSError is gone from the message and the chain.
    lost = RuntimeError("Worker failure: An error is caught while starting worker 0")
    with pytest.raises(CheckpointError, match=r"iter_0000010: no space left on .* \(needed ~3 "
                       r"GiB, free 0 GiB\)$"):  # fmt: skip
        save_space.failed(lost, target, 3 * GIB, writes)
    assert not target.exists()


def test_enospc_in_the_error_chain_counts_and_other_errors_pass_through(tmp_path: Path) -> None:
    target = tmp_path / "iter_0000010"
    target.mkdir()
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("finalize failed") from inner
    except RuntimeError as outer:
        with pytest.raises(CheckpointError, match="no space left on"):
            save_space.failed(outer, target, GIB, manifest.WriteLog())
    target.mkdir()
    other = OSError("disk full (simulated)")  # no errno: not known to be space
    with pytest.raises(OSError, match=r"^disk full \(simulated\)$"):
        save_space.failed(other, target, GIB, manifest.WriteLog())
    assert not target.exists()
