"""An output that is complete or absent.

The folder is written under a temporary name beside it and renamed at the end, so a failed or
killed conversion leaves no half-written model. Files inside are written without fsync (the
large ones with O_DIRECT, `direct_file.py`, so their bytes are on the device already); the
whole folder is flushed once just before the rename, which also flushes the device's write
cache. So after a crash, even of the machine, the final name holds either nothing or complete
files.

`WriteLedger` checks the other half of "complete": that every tensor the plan named was written,
once, with its planned size. The writers find a tensor's bytes by their order in the stream and
by buffer address (splice.py), so a change in how PyTorch's checkpoint writer hands them over
would otherwise go unnoticed and leave placeholder bytes in the checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_output(out: Path, overwrite: bool) -> None:
    """Raise before any work when `out` exists and may not be replaced."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; remove it, pick another folder or pass --overwrite")


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `out` (the old one deleted only then)."""
    out = Path(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        _flush(tmp)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class WriteLedger:
    """The tensors a conversion plans to write, with their sizes, and those it wrote."""

    def __init__(self, what: str) -> None:
        self.what = what  # names the output in errors
        self.planned: dict[str, int] = {}
        self.written: dict[str, int] = {}

    def plan(self, name: str, nbytes: int) -> None:
        if name in self.planned:
            raise ValueError(f"{self.what}: tensor {name} planned twice")
        self.planned[name] = nbytes

    def record(self, name: str, nbytes: int) -> None:
        """`name`'s data was written: `nbytes` bytes of it."""
        if name in self.written:
            raise RuntimeError(f"{self.what}: tensor {name} written twice")
        self.written[name] = nbytes

    def check(self) -> None:
        """Raise naming every planned tensor not written, or written with another size, and
        every tensor written that was not planned."""
        missing = [name for name in self.planned if name not in self.written]
        wrong = [
            f"{name} ({self.written[name]} B written, {size} B planned)"
            for name, size in self.planned.items()
            if name in self.written and self.written[name] != size
        ]
        extra = [name for name in self.written if name not in self.planned]
        problems = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("planned but never written", missing),
                ("written with the wrong size", wrong),
                ("written but not planned", extra),
            )
            if names
        ]
        if problems:
            raise RuntimeError(f"{self.what}: incomplete output; " + "; ".join(problems))


def _flush(folder: Path) -> None:
    """fsync every file under `folder`, then the folders themselves (their entries)."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
