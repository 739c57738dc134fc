"""Read whole tensors (or one layer of a stacked tensor) from a torch_dist checkpoint, with plain
file reads straight into a caller's reused buffer.

`dist_checkpointing.load` per layer re-reads the common state and metadata, `torch.load`s each
chunk into fresh memory and then copies it into the requested tensor: two copies plus ~100k page
faults per 400 MB tensor, most of the megatron -> HF time. The format makes a direct read easy:
the checkpoint's `.metadata` gives, for every chunk of every tensor, a byte range of a `.distcp`
file holding one `torch.save` zip, whose single storage record is uncompressed and holds the chunk
row-major (megatron makes every shard contiguous before saving). Anything else (a stream
transform, a compressed or unexpected record) falls back to `torch.load` of that chunk.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from megatron_chimed.checkpoint.safe_load import read_index
from megatron_chimed.convert.buffers import Buffer, nbytes, read_exact
from megatron_chimed.convert.splice import RowBlock, RowSource, row_bytes
from megatron_chimed.convert.zip_records import record_data_start, storage_records


class _Window(io.RawIOBase):
    """A read-only file view of bytes [start, start + length) (for zipfile's directory)."""

    def __init__(self, f: io.BufferedReader, start: int, length: int) -> None:
        self.f, self.start, self.length, self.pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        self.pos = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.length}[whence] + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:  # noqa: ANN001 (any writable buffer)
        self.f.seek(self.start + self.pos)
        size = min(len(b), max(0, self.length - self.pos))
        got = self.f.readinto(memoryview(b)[:size])
        self.pos += got
        return got


def _data_start(f: io.BufferedReader, start: int, length: int, size: int) -> int | None:
    """Where the raw bytes of the one storage in the torch.save zip at `start` begin, or None
    if the blob is not the plain layout this reader relies on."""
    with zipfile.ZipFile(_Window(f, start, length)) as zf:
        data = storage_records(zf)
    if len(data) != 1 or data[0].compress_type != zipfile.ZIP_STORED or data[0].file_size != size:
        return None
    return record_data_start(f, start, data[0])


class CheckpointReader:
    """The tensors of one torch_dist checkpoint folder, by sharded key."""

    def __init__(self, ckpt_dir: Path) -> None:
        self.directory = Path(ckpt_dir)
        # The index unpickled without running stored code (what PyTorch's reader would do).
        metadata = read_index(ckpt_dir)
        self.tensors = metadata.state_dict_metadata
        self.chunks: dict[str, list] = {}
        for index, info in metadata.storage_data.items():
            if index.offset is None:  # a pickled object (common state, _extra_state)
                continue
            self.chunks.setdefault(index.fqn, []).append((tuple(index.offset), info))

    def shape(self, key: str, stacked: bool) -> tuple[int, ...]:
        """The shape `read` returns: one layer's when the tensor stacks layers on axis 0."""
        size = tuple(self.tensors[key].size)
        return size[1:] if stacked else size

    def _chunks(self, key: str, layer: int | None) -> Iterator[tuple[tuple, tuple, Any]]:
        """(offsets, sizes, storage info) of each stored chunk of `key`, or of its layer
        `layer` with the layer axis dropped."""
        meta = self.tensors[key]
        for offsets, info in self.chunks[key]:
            sizes = next(tuple(c.sizes) for c in meta.chunks if tuple(c.offsets) == offsets)
            if layer is not None:
                if not offsets[0] <= layer < offsets[0] + sizes[0]:
                    continue
                if sizes[0] != 1:
                    raise ValueError(f"{self.directory}: {key} has a chunk of several layers")
                offsets, sizes = offsets[1:], sizes[1:]
            yield offsets, sizes, info

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].properties.dtype

    def read(self, key: str, layer: int | None, out: Buffer, scratch: Buffer) -> torch.Tensor:
        """Tensor `key` (layer `layer` of it if not None) as a view of `out`'s memory; `scratch`
        holds chunks that are only part of it (a checkpoint saved at TP > 1)."""
        meta = self.tensors[key]
        dtype = meta.properties.dtype
        full = self.shape(key, layer is not None)
        dest = out.tensor(full, dtype)
        for offsets, sizes, info in self._chunks(key, layer):
            whole = sizes == full
            target = dest if whole else scratch.tensor(sizes, dtype)
            self._read_chunk(info, target)
            if not whole:
                region = dest
                for dim, (start, size) in enumerate(zip(offsets, sizes)):
                    region = region.narrow(dim, start, size)
                region.copy_(target)
        return dest

    def row_source(self, key: str, layer: int | None) -> RowSource | None:
        """Where the rows of tensor `key` (layer `layer` of it) lie in the `.distcp` files, or
        None if they are not whole contiguous rows there (column chunks, another layout)."""
        meta = self.tensors[key]
        full = self.shape(key, layer is not None)
        itemsize = meta.properties.dtype.itemsize
        blocks = []
        for offsets, sizes, info in self._chunks(key, layer):
            if len(full) > 1 and (any(offsets[1:]) or sizes[1:] != full[1:]):
                return None
            if info.transform_descriptors:
                return None
            path = self.directory / info.relative_path
            with open(path, "rb") as f:
                start = _data_start(f, info.offset, info.length, math.prod(sizes) * itemsize)
            if start is None:
                return None
            first, count = (offsets[0], sizes[0]) if len(full) > 1 else (0, 1)
            blocks.append(RowBlock(first, count, path, start))
        blocks.sort(key=lambda b: b.first)
        return RowSource(row_bytes(full, meta.properties.dtype), tuple(blocks))

    def _read_chunk(self, info, target: torch.Tensor) -> None:  # noqa: ANN001 (DCP _StorageInfo)
        path = self.directory / info.relative_path
        size = target.numel() * target.element_size()
        if info.transform_descriptors:
            raise ValueError(f"{path}: stream transforms {info.transform_descriptors} unsupported")
        with open(path, "rb") as f:
            start = _data_start(f, info.offset, info.length, size)
            if start is not None:
                read_exact(f, start, target.reshape(-1).view(torch.uint8).numpy().data)
                return
            f.seek(info.offset)
            blob = io.BytesIO(f.read(info.length))
        target.copy_(torch.load(blob, map_location="cpu", weights_only=True).view(target.shape))


def largest_tensor(reader: CheckpointReader, keys: list[tuple[str, bool]]) -> int:
    """Bytes of the largest of these (key, stacked) tensors as `read` returns them."""
    return max(
        nbytes(reader.shape(key, stacked), reader.tensors[key].properties.dtype)
        for key, stacked in keys
    )
