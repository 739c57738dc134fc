"""checkpoint/manifest.py: sizes and CRC32s written with a checkpoint, checked on load, and the
hook that checksums megatron's shard files as its writer streams them. One process, no
torch.distributed (the collectives fall back to this process alone)."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import pytest

from megatron_chimed.checkpoint import manifest


def _folder(tmp_path: Path) -> Path:
    ckpt = tmp_path / "iter_0000004"
    ckpt.mkdir()
    (ckpt / "__0_0.distcp").write_bytes(bytes(range(256)) * 400)
    (ckpt / "__1_0.distcp").write_bytes(b"\x07" * 1000)
    (ckpt / ".metadata").write_bytes(b"index")
    return ckpt


def test_manifest_records_every_file_and_a_sound_folder_verifies(tmp_path: Path) -> None:
    ckpt = _folder(tmp_path)
    log = manifest.WriteLog()
    log.done("__0_0.distcp", 102400, zlib.crc32(bytes(range(256)) * 400))  # seen while written
    manifest.write(ckpt, log, {"chimed.json": b'{"iteration": 4}'})
    files = json.loads((ckpt / manifest.MANIFEST).read_text())["files"]
    assert files == {
        ".metadata": {"size": 5, "crc32": f"{zlib.crc32(b'index'):08x}"},
        "__0_0.distcp": {"size": 102400, "crc32": f"{zlib.crc32(bytes(range(256)) * 400):08x}"},
        "__1_0.distcp": {"size": 1000, "crc32": f"{zlib.crc32(b'\x07' * 1000):08x}"},
        "chimed.json": {"size": 16, "crc32": f"{zlib.crc32(b'{"iteration": 4}'):08x}"},
    }
    (ckpt / "chimed.json").write_bytes(b'{"iteration": 4}')
    assert manifest.verify(ckpt) == []


def test_flipped_byte_truncation_and_missing_file_each_name_the_file(tmp_path: Path) -> None:
    ckpt = _folder(tmp_path)
    manifest.write(ckpt, manifest.WriteLog(), {})
    shard = ckpt / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0x01
    shard.write_bytes(data)
    assert manifest.verify(ckpt) == [
        f"{shard}: checksum {zlib.crc32(data):08x}, manifest.json records "
        f"{zlib.crc32(bytes(range(256)) * 400):08x} (corrupted)"
    ]
    shard.write_bytes(data[:4096])
    (ckpt / "__1_0.distcp").unlink()
    assert manifest.verify(ckpt) == [
        f"{shard}: 4096 bytes, manifest.json records 102400 (truncated?)",
        f"{ckpt / '__1_0.distcp'}: missing (listed in manifest.json)",
    ]


def test_a_checkpoint_without_manifest_is_not_verified(tmp_path: Path) -> None:
    assert manifest.verify(_folder(tmp_path)) is None


def test_shares_split_the_bytes_over_the_ranks(tmp_path: Path) -> None:
    sizes = {"a": 100, "b": 90, "c": 60, "d": 40, "e": 5}
    shares = [manifest._share(sizes, rank, 2) for rank in range(2)]
    assert shares == [["a", "d", "e"], ["b", "c"]]  # 145 and 150 bytes
    assert manifest._share(sizes, 0, 1) == ["a", "b", "c", "d", "e"]


def test_the_hook_checksums_the_files_megatrons_writer_streams(tmp_path: Path) -> None:
    """Through FileSystemWriterAsync.write_preloaded_data itself: if megatron stops opening its
    shards with the `open` of its module, this fails (and saves fall back to reading back)."""
    import torch
    from megatron.core.dist_checkpointing.strategies.filesystem_async import (
        FileSystemWriterAsync,
    )
    from torch.distributed.checkpoint.filesystem import _StorageWriterTransforms
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import WriteItem, WriteItemType

    shard = tmp_path / "__0_0.distcp"
    items = [(WriteItem(MetadataIndex(f"obj{i}"), WriteItemType.BYTE_IO), io.BytesIO(b"x" * i))
             for i in (10, 2000)]  # fmt: skip
    tensor = (WriteItem(MetadataIndex("t"), WriteItemType.TENSOR), torch.arange(1000.0))
    bucket = (str(shard), "__0_", (items, [tensor]))
    log = manifest.WriteLog()
    with manifest.record_writes(tmp_path, log):
        _, result = FileSystemWriterAsync.write_preloaded_data(
            [_StorageWriterTransforms()], 0, bucket, None, None, True
        )
    assert not isinstance(result, Exception), result
    data = shard.read_bytes()
    assert len(data) > 6000
    assert log.files == {"__0_0.distcp": (len(data), zlib.crc32(data))}
    # Outside the context megatron's module sees the builtin again, and torch.save computes its
    # per-record CRC32 again (skipped inside: the manifest's covers the same bytes).
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    assert "open" not in vars(filesystem_async)
    assert torch.serialization.get_crc32_options()
    tensor_item = next(w.storage_data for w in result if w.index.fqn == "t")
    record = data[tensor_item.offset : tensor_item.offset + tensor_item.length]
    assert torch.equal(torch.load(io.BytesIO(record), weights_only=True), torch.arange(1000.0))


def test_a_write_error_is_kept_with_its_errno(tmp_path: Path) -> None:
    import errno

    class Full(io.BytesIO):
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    log = manifest.WriteLog()
    hashed = manifest._HashingFile(Full(), "x.distcp", log)
    with pytest.raises(OSError):
        hashed.write(b"abc")
    assert [e.errno for e in log.errors] == [errno.ENOSPC]
