"""An output folder that appears complete or not at all: written under a temporary name beside
it and renamed at the end, so a failed or killed conversion leaves no half-written model.

Files inside are written without fsync (the large ones with O_DIRECT, `direct_file.py`, so
their bytes are on the device already); the whole folder is flushed once just before the
rename, which also flushes the device's write cache. So after a crash, even of the machine,
the final name holds either nothing or complete files."""

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


def _flush(folder: Path) -> None:
    """fsync every file under `folder`, then the folders themselves (their entries)."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
