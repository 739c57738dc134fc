"""Per-file sizes and CRC32s of a checkpoint folder (`iter_N/manifest.json`), and their check.

torch_dist reads raw bytes at the offsets its index records, so a flipped bit in a shard loads
without complaint (a resume continues from wrong weights) and a truncated one fails as an
EOFError on one rank while the others wait in a collective. Each training checkpoint therefore
records the size and CRC32 of every file in its folder:

    {"algorithm": "crc32", "files": {"__0_0.distcp": {"size": 5223335, "crc32": "1a2b3c4d"}}}

Shard files are checksummed while megatron's writer streams them (`record_writes` wraps the
files its FileSystemWriterAsync opens; a large buffer is checksummed in a helper thread while it
is written), so a save does not read its shards back; the small files
other code writes (DCP's `.metadata`, megatron's metadata.json) are read back, and so is any file
the hook did not see (a megatron that opens its files another way): correct, only slower.
`verify` checks a folder in parallel: each rank reads about 1/world of its bytes.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch.distributed as dist

from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.checkpoint import layout

MANIFEST = "manifest.json"
ALGORITHM = "crc32"
_CHUNK = 16 << 20
_OVERLAP = 1 << 20  # writes from this size on are checksummed while they are written
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _hasher() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:  # megatron's writer threads may ask at once
        if _pool is None:  # one hasher per writer thread is enough
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="checkpoint-crc")
        return _pool


class WriteLog:
    """What the hooked writer saw: name -> (size, crc32) of each file it closed, and the
    OSErrors its writes raised (megatron's worker turns them into a message without errno)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, int]] = {}
        self.errors: list[OSError] = []
        self.waited = 0.0  # seconds writes spent on checksums beyond the write itself
        self._lock = threading.Lock()  # megatron writes one file per thread

    def done(self, name: str, size: int, crc: int) -> None:
        with self._lock:
            self.files[name] = (size, crc)

    def failed(self, error: OSError) -> None:
        with self._lock:
            self.errors.append(error)


class _HashingFile:
    """A file opened for writing whose bytes are checksummed as they go through `write`."""

    def __init__(self, raw: Any, name: str, log: WriteLog) -> None:
        self._raw, self._name, self._log = raw, name, log
        self._crc = self._size = 0
        self._in_order = True  # a seek or a short write: the stream CRC is not the file's

    def write(self, data: Any) -> int:
        nbytes = memoryview(data).nbytes
        # A large buffer (a tensor's storage) is checksummed in another thread while this one
        # writes it: zlib and the write both release the GIL, so the CRC costs time only where
        # it is slower than the write. The buffer is only valid during this call: wait for it.
        pending = _hasher().submit(zlib.crc32, data, self._crc) if nbytes >= _OVERLAP else None
        try:
            written = self._raw.write(data)
        except OSError as err:
            self._log.failed(err)
            raise
        finally:
            start = time.perf_counter()
            crc = pending.result() if pending is not None else None
        if written is not None and written != nbytes:
            self._in_order = False
        self._crc = crc if crc is not None else zlib.crc32(data, self._crc)
        self._size += nbytes
        self._log.waited += time.perf_counter() - start  # not exact across threads: a measure
        return nbytes if written is None else written

    def seek(self, *args: Any) -> int:
        self._in_order = False
        return self._raw.seek(*args)

    def close(self) -> None:
        self._raw.close()
        if self._in_order:
            self._log.done(self._name, self._size, self._crc)

    def __getattr__(self, name: str) -> Any:  # tell, fileno, flush ...
        return getattr(self._raw, name)

    def __enter__(self) -> _HashingFile:
        return self

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is None:
            self.close()
        else:
            self._raw.close()  # a failed file is not recorded: the save fails anyway


@contextlib.contextmanager
def record_writes(directory: str | os.PathLike, log: WriteLog) -> Iterator[WriteLog]:
    """Checksum into `log` the files megatron's torch_dist writer creates in `directory` while
    it writes them.

    Its worker opens each shard with the name `open` looked up in its module at call time, so
    shadowing that name for the duration of the save wraps exactly those files.

    The worker torch.save()s each tensor into its shard, and torch.save computes a CRC32 of
    every record for the zip format, which torch.load never checks: the same pass over the same
    bytes as ours. From the first shard on (the non-tensor items were serialized before, with
    theirs) torch's is skipped, as the converter does, so the manifest costs no extra pass."""
    import torch
    from megatron.core.dist_checkpointing.strategies import filesystem_async as writer

    directory = Path(directory).resolve()
    had_own = "open" in vars(writer)
    opener = vars(writer).get("open", builtins.open)
    torch_crc = torch.serialization.get_crc32_options()

    def hashing_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = opener(file, mode, *args, **kwargs)
        path = Path(file)
        if "w" in mode and "b" in mode and path.resolve().parent == directory:
            torch.serialization.set_crc32_options(False)
            return _HashingFile(handle, path.name, log)
        return handle

    writer.open = hashing_open
    try:
        yield log
    finally:
        torch.serialization.set_crc32_options(torch_crc)
        if had_own:
            writer.open = opener
        else:
            del writer.open


def file_crc(path: Path) -> tuple[int, int]:
    """(size, crc32) of a file, read in chunks."""
    crc = size = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
            size += n
    return size, crc


def _share(sizes: dict[str, int], rank: int, world: int) -> list[str]:
    """This rank's files: largest first, each to the rank with the fewest bytes so far (the
    same answer on every rank)."""
    loads = [0] * world
    mine = []
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        owner = loads.index(min(loads))
        loads[owner] += sizes[name]
        if owner == rank:
            mine.append(name)
    return mine


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _gather(value: Any) -> list[Any]:
    # Small Python objects this process made itself (names, sizes, messages), never file bytes.
    if not dist.is_initialized():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def write(ckpt_dir: str | os.PathLike, log: WriteLog, extra: dict[str, bytes]) -> None:
    """Write `ckpt_dir`/manifest.json (collective). `log`: this rank's hooked writes; `extra`:
    files rank 0 writes after the manifest, by content (chimed.json)."""
    ckpt_dir = Path(ckpt_dir)
    seen: dict[str, tuple[int, int]] = {}
    for part in _gather(log.files):
        seen.update(part)
    rank, world = _world()
    on_disk = {p.name: p.stat().st_size for p in ckpt_dir.iterdir() if p.is_file()}
    missing = {name: size for name, size in on_disk.items() if name not in seen}
    read_back = {name: file_crc(ckpt_dir / name) for name in _share(missing, rank, world)}
    for part in _gather(read_back):
        seen.update(part)
    for name, data in extra.items():
        seen[name] = (len(data), zlib.crc32(data))
    if rank == 0:
        files = {name: {"size": size, "crc32": f"{crc:08x}"} for name, (size, crc) in seen.items()}
        body = {"algorithm": ALGORITHM, "files": dict(sorted(files.items()))}
        atomic_write_text(ckpt_dir / MANIFEST, json.dumps(body, indent=1))


def read(ckpt_dir: str | os.PathLike) -> dict[str, dict[str, Any]] | None:
    """The manifest's files, or None for a checkpoint written before manifests."""
    path = Path(ckpt_dir) / MANIFEST
    try:
        body = json.loads(path.read_text())
        files = body["files"]
        if body.get("algorithm") != ALGORITHM or not isinstance(files, dict):
            raise ValueError(f"algorithm {body.get('algorithm')!r}")
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        return {MANIFEST: {"problem": f"unreadable ({err})"}}
    return files


def _check(path: Path, entry: dict[str, Any]) -> str | None:
    if "problem" in entry:
        return f"{path}: {entry['problem']}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing (listed in {MANIFEST})"
    if size != entry.get("size"):
        return f"{path}: {size} bytes, {MANIFEST} records {entry.get('size')} (truncated?)"
    _, crc = file_crc(path)
    if f"{crc:08x}" != entry.get("crc32"):
        return f"{path}: checksum {crc:08x}, {MANIFEST} records {entry.get('crc32')} (corrupted)"
    return None


def verify(ckpt_dir: str | os.PathLike) -> list[str] | None:
    """Problems found in `ckpt_dir` against its manifest, each naming a file ([] when sound),
    or None without a manifest. Collective: each rank reads its share; all get the same list."""
    ckpt_dir = Path(ckpt_dir)
    files = read(ckpt_dir)
    if files is None:
        return None
    rank, world = _world()
    sizes = {name: int(entry.get("size") or 0) for name, entry in files.items()}
    mine = [_check(ckpt_dir / name, files[name]) for name in _share(sizes, rank, world)]
    return sorted(p for part in _gather([p for p in mine if p]) for p in part)


def metadata_bytes(metadata: dict[str, Any]) -> bytes:
    """chimed.json exactly as layout.write_metadata writes it (its checksum goes in first)."""
    return layout.metadata_text(metadata).encode()
