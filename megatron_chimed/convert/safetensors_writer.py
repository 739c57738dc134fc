"""Write HF safetensors shards + index from a stream of tensors, one tensor in RAM at a time.

`safetensors.torch.save_file` needs a whole shard (5 GB by default) in memory. The format is
simple enough to stream: an 8-byte little-endian header length, a JSON header giving every
tensor's dtype, shape and byte range, then the raw bytes in that order. Shapes are known from
the config before any tensor exists, so each shard's header is written first and the tensors
are appended as they arrive.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from megatron_chimed.convert.splice import Spliced, copy_segments, start_writeback

DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
INDEX_FILE = "model.safetensors.index.json"
ALIGN = 1 << 16

Plan = list[tuple[str, tuple[int, ...], torch.dtype]]


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return int(torch.Size(shape).numel()) * dtype.itemsize


def split_into_shards(plan: Plan, max_shard_bytes: int) -> list[Plan]:
    """Consecutive tensors, a new shard when the next would pass the limit (as HF does)."""
    shards: list[Plan] = [[]]
    size = 0
    for item in plan:
        nbytes = _nbytes(item[1], item[2])
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    return shards


def _layout(shard: Plan) -> tuple[bytes, dict[str, int]]:
    """The shard's header, and where each tensor's bytes start in the file.

    The data starts at a 64 KiB boundary (the header is padded with spaces, which JSON allows)
    and tensors whose size is a multiple of 64 KiB (every large weight) come first, so they
    all start on 64 KiB boundaries; then the largest odd-sized one (a vocab-sized matrix), also
    aligned, then the rest. The kernel copies 64 KiB-aligned ranges 1.5-5x faster than others
    (copy_file_range, splice.py); readers go by the header's offsets, not the names' order.
    """

    def odd_size(item: tuple) -> tuple[bool, int]:
        size = _nbytes(item[1], item[2])
        return (False, 0) if size % ALIGN == 0 else (True, -size)

    by_size = sorted(shard, key=odd_size)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in by_size:
        end = offset + _nbytes(shape, dtype)
        header[name] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, end],
        }
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % ALIGN)
    start = 8 + len(raw)
    where = {name: start + header[name]["data_offsets"][0] for name, _, _ in shard}
    return struct.pack("<Q", len(raw)) + raw, where


def write_safetensors_shards(
    out_dir: Path,
    plan: Plan,
    tensors: Iterator[tuple[str, torch.Tensor | Spliced]],
    max_shard_bytes: int,
) -> list[Path]:
    """Write `tensors` (arriving in `plan` order) as `model-0000K-of-0000N.safetensors`;
    a `Spliced` one is copied from its byte ranges (splice.py)."""
    shards = split_into_shards(plan, max_shard_bytes)
    weight_map: dict[str, str] = {}
    paths = []
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        # Unbuffered: copy_file_range appends at the descriptor's position, which a buffered
        # writer would not know about.
        with open(out_dir / file, "wb", buffering=0) as f:
            header, where = _layout(shard)
            _write_all(f, memoryview(header))
            for name, shape, dtype in shard:
                got_name, tensor = next(tensors)
                if got_name != name or tuple(tensor.shape) != shape or tensor.dtype != dtype:
                    raise ValueError(
                        f"{file}: expected {name} {list(shape)} {dtype}, got {got_name} "
                        f"{list(tensor.shape)} {tensor.dtype}"
                    )
                f.seek(where[name])
                if isinstance(tensor, Spliced):
                    copy_segments(f.fileno(), tensor.segments)
                else:
                    data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
                    _write_all(f, memoryview(data))
                weight_map[name] = file
            start_writeback(f.fileno())
        paths.append(out_dir / file)
    total = sum(_nbytes(shape, dtype) for _, shape, dtype in plan)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return paths


def _write_all(f: BinaryIO, view: memoryview) -> None:
    done = 0
    while done < len(view):  # an unbuffered write may be partial
        done += f.write(view[done:])
