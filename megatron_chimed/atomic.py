"""Atomic file writes: a temp file in the same folder, fsynced, then renamed over the target.

Readers (and a job restarted after a crash) see the previous complete file or the new complete
file, never half of one. Every writer of results, caches and pointers in the project uses this.
The file gets the permissions any other new file would (0666 less the umask), not mkstemp's
private 0600, so that the rest of a group can read a shared run folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temp file for writing (`w` text, `wb` bytes); it replaces `path` on success and
    is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new hidden file beside `path`, opened for writing. Created with mode 0666 so that the
    kernel applies the umask (and any default ACL) as for an ordinary file; reading the umask
    instead would mean setting it, which is process-wide and races with other threads."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_open(path) as f:
        f.write(text)
