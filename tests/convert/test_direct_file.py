"""DirectFile (convert/direct_file.py): the bytes written are exactly the bytes asked for, across
buffer boundaries, with or without O_DIRECT; errors surface as themselves."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from megatron_chimed.convert.direct_file import BLOCK, DirectFile

CHUNK = 4 * BLOCK  # small, so a few KB cross many buffer boundaries


def _source(tmp_path: Path, size: int = 100_003) -> tuple[Path, bytes]:
    data = random.Random(0).randbytes(size)
    path = tmp_path / "source.bin"
    path.write_bytes(data)
    return path, data


def _write_mixed(out: Path, src: Path) -> tuple[bytes, list[int]]:
    """Plain writes, unaligned segments, zero runs; returns the expected bytes and tell()s."""
    data = src.read_bytes()
    expected, tells = b"", []
    with DirectFile(out, chunk=CHUNK) as f:
        for k, (offset, length) in enumerate([(3, 5000), (7, 1), (0, 40_000), (59_999, 40_004)]):
            head = bytes([k]) * (k * 3001)
            f.write(head)
            f.copy_segments([(src, offset, length), (None, 0, k * 777)])
            expected += head + data[offset : offset + length] + bytes(k * 777)
            tells.append(f.tell())
            assert tells[-1] == len(expected)
    return expected, tells


def test_bytes_are_exact_across_buffers(tmp_path: Path) -> None:
    src, _ = _source(tmp_path)
    expected, _ = _write_mixed(tmp_path / "out", src)
    assert len(expected) % BLOCK != 0  # the padded last block was cut back
    assert (tmp_path / "out").read_bytes() == expected


def test_without_o_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused at open (EINVAL) or at the first write: the same bytes, through the page cache."""
    src, _ = _source(tmp_path)
    real_open, real_pwrite = os.open, os.pwrite

    def no_direct_open(path, flags, *args):  # noqa: ANN001, ANN202
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct_open)
    expected, _ = _write_mixed(tmp_path / "a", src)
    assert (tmp_path / "a").read_bytes() == expected
    monkeypatch.setattr(os, "open", real_open)

    refused = []

    def no_direct_write(fd: int, data, offset: int) -> int:  # noqa: ANN001
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", no_direct_write)
    expected, _ = _write_mixed(tmp_path / "b", src)
    assert (tmp_path / "b").read_bytes() == expected
    assert refused == [0]  # once, then O_DIRECT was switched off


def test_write_error_surfaces_as_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = _source(tmp_path)
    real_pwrite = os.pwrite

    def full_after_two(fd: int, data, offset: int) -> int:  # noqa: ANN001
        if offset >= 2 * CHUNK:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_after_two)
    with pytest.raises(OSError, match="No space left"):
        _write_mixed(tmp_path / "out", src)


def test_truncated_source_names_the_file(tmp_path: Path) -> None:
    src, data = _source(tmp_path)
    with pytest.raises(ValueError, match="source.bin: ends before byte"):
        with DirectFile(tmp_path / "out", chunk=CHUNK) as f:
            f.copy_segments([(src, len(data) - 10, 20)])
