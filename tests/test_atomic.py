"""megatron_chimed/atomic.py: atomic writes get ordinary-file permissions and leave no temp."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from megatron_chimed.atomic import atomic_open, atomic_write_text


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


@pytest.mark.parametrize(
    ("umask", "expected"), [(0o022, 0o644), (0o002, 0o664)], indirect=["umask"]
)
def test_files_honour_the_umask(tmp_path: Path, umask: int, expected: int) -> None:
    text, binary = tmp_path / "a.json", tmp_path / "sub" / "b.npz"
    atomic_write_text(text, "{}")
    with atomic_open(binary, "wb") as f:
        f.write(b"\0")
    plain = tmp_path / "plain"
    plain.write_text("x")  # what any other writer of the process gets
    for path in (text, binary, plain):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "b.npz", "plain", "sub"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
