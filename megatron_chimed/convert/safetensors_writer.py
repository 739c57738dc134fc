"""Write HF safetensors shards + index from a stream of tensors, one tensor in RAM at a time.

`safetensors.torch.save_file` needs a whole shard (5 GB by default) in memory. The format is
simple enough to stream: an 8-byte little-endian header length, a JSON header giving every
tensor's dtype, shape and byte range, then the raw bytes in that order. Shapes are known from
the config before any tensor exists, so each shard's header is written first and the tensors
are appended as they arrive. A `WriteLedger` checks at the end that every planned tensor was
written once, with its size.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_chimed.convert.buffers import nbytes
from megatron_chimed.convert.direct_file import DirectFile
from megatron_chimed.convert.splice import Spliced
from megatron_chimed.convert.staging import WriteLedger

DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
INDEX_FILE = "model.safetensors.index.json"

Plan = list[tuple[str, tuple[int, ...], torch.dtype]]


def split_into_shards(plan: Plan, max_shard_bytes: int) -> list[Plan]:
    """Consecutive tensors, a new shard when the next would pass the limit (as HF does)."""
    shards: list[Plan] = [[]]
    size = 0
    for item in plan:
        item_bytes = nbytes(item[1], item[2])
        if shards[-1] and size + item_bytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item_bytes
    return shards


def _header(shard: Plan) -> bytes:
    """The shard's header: tensors in arrival order, the data start padded to 8 bytes (with
    spaces, which JSON allows) as HF's own writer does, so every tensor is dtype-aligned."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in shard:
        end = offset + nbytes(shape, dtype)
        header[name] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, end],
        }
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors_shards(
    out_dir: Path,
    plan: Plan,
    tensors: Iterator[tuple[str, torch.Tensor | Spliced]],
    max_shard_bytes: int,
) -> list[Path]:
    """Write `tensors` (arriving in `plan` order) as `model-0000K-of-0000N.safetensors`;
    a `Spliced` one is copied from its byte ranges (splice.py). Raises naming any tensor of
    `plan` that was not written, once, with its size."""
    ledger = WriteLedger(str(out_dir))
    for name, shape, dtype in plan:
        ledger.plan(name, nbytes(shape, dtype))
    shards = split_into_shards(plan, max_shard_bytes)
    weight_map: dict[str, str] = {}
    paths = []
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        with DirectFile(out_dir / file) as f:
            f.write(_header(shard))
            for name, shape, dtype in shard:
                got_name, tensor = next(tensors, (None, None))
                if tensor is None:
                    raise ValueError(f"{file}: no tensor arrived for {name}")
                if got_name != name or tuple(tensor.shape) != shape or tensor.dtype != dtype:
                    raise ValueError(
                        f"{file}: expected {name} {list(shape)} {dtype}, got {got_name} "
                        f"{list(tensor.shape)} {tensor.dtype}"
                    )
                start = f.tell()
                if isinstance(tensor, Spliced):
                    f.copy_segments(tensor.segments)
                else:
                    f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
                ledger.record(name, f.tell() - start)
                weight_map[name] = file
        paths.append(out_dir / file)
    ledger.check()
    extra = next(tensors, None)
    if extra is not None:
        raise ValueError(f"{out_dir}: tensor {extra[0]} arrived after the planned ones")
    total = sum(nbytes(shape, dtype) for _, shape, dtype in plan)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return paths
