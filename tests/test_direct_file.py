"""DirectFile (convert/direct_file.py): the bytes written are exactly the bytes asked for, across
buffer boundaries, with or without O_DIRECT; errors surface as themselves."""

from __future__ import annotations

import ctypes
import errno
import mmap
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


def _cached_pages(path: Path) -> int:
    """Pages of `path` in the page cache (mincore on a private mapping: looks, touches nothing;
    a probing read would start readahead)."""
    size = path.stat().st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        pages = (ctypes.c_ubyte * (-(-size // mmap.PAGESIZE)))()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), pages) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        del address  # the mapping may close only without exported pointers
        return sum(page & 1 for page in pages)


def test_the_page_cache_is_left_as_found(tmp_path: Path) -> None:
    """A source file read from disk does not stay in the cache (but for pages in large folios
    that straddle a read's end, or readahead past it); a cached one stays cached."""
    src, data = _source(tmp_path, 32 << 20)
    pages = len(data) // 4096
    fd = os.open(src, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if _cached_pages(src) > 0:
        pytest.skip("this file system keeps clean pages cached (tmpfs?)")
    with DirectFile(tmp_path / "out", chunk=4 << 20) as f:  # 16 MiB in use: 1/4 of the file
        f.copy_segments([(src, 0, len(data) // 2), (src, len(data) // 2, len(data) // 2)])
    assert _cached_pages(src) <= pages // 4
    assert (tmp_path / "out").read_bytes() == data
    src.read_bytes()  # now cached
    assert _cached_pages(src) == pages
    with DirectFile(tmp_path / "out2", chunk=4 << 20) as f:
        f.copy_segments([(src, 0, len(data))])
    assert _cached_pages(src) == pages
    assert (tmp_path / "out2").read_bytes() == data
