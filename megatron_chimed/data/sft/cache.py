"""The packed SFT cache on disk: plain `.npy` arrays that every rank memory-maps.

`sft_<key>.<array>.npy`, opened with `np.load(mmap_mode="r")`, so the ranks of a node share
one copy in the page cache and a rank holds privately only what it computes per row:

* `tokens`: every sample's ids, samples of a row next to each other, rows in training order
  (uint16 when the vocabulary fits, as Ziya's 39,410 does, else int32);
* `loss_mask`: uint8, one per token;
* `sample_offsets`: int64 [samples + 1], where each sample starts in `tokens`;
* `row_offsets`: int64 [rows + 1], where each row's first sample is in `sample_offsets`;

and the stamp `sft_<key>.json`: what the cache was made from (the content the key hashes), each
array file's size, the longest row's sample count and the per-source statistics. Every file is
written under a temporary name and renamed, the stamp last: arrays without a stamp that matches
them (a build killed halfway, a cache of other inputs) are not a cache, and are rebuilt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megatron_chimed.atomic import atomic_open, atomic_write_text

ARRAYS = ("tokens", "loss_mask", "sample_offsets", "row_offsets")
WRITE_BLOCK = 1 << 14  # samples gathered at a time: bounded memory whatever the data's size


def array_path(prefix: str | os.PathLike, name: str) -> Path:
    return Path(f"{prefix}.{name}.npy")


def stamp_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.json")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


def read_stamp(prefix: str | os.PathLike) -> dict[str, Any] | None:
    try:
        stamp = json.loads(stamp_path(prefix).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def ready(prefix: str | os.PathLike, content: dict[str, Any]) -> bool:
    """Whether a complete cache made from `content` is there: a stamp that names this content,
    and every array file of the size the stamp records."""
    stamp = read_stamp(prefix)
    if stamp is None or stamp.get("content") != json.loads(json.dumps(content)):
        return False
    sizes = stamp.get("bytes", {})
    for name in ARRAYS:
        path = array_path(prefix, name)
        if not path.is_file() or path.stat().st_size != sizes.get(name):
            return False
    return True


def open_arrays(prefix: str | os.PathLike) -> dict[str, np.ndarray]:
    """The cache's arrays, memory-mapped read-only."""
    return {name: np.load(array_path(prefix, name), mmap_mode="r") for name in ARRAYS}


def gather_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions of the spans `[start, start + length)`, one after another."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)


def _write_header(f: Any, dtype: np.dtype, count: int) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": (count,)}  # fmt: skip
    np.lib.format.write_array_header_1_0(f, header)


def _save(prefix: str | os.PathLike, name: str, array: np.ndarray) -> None:
    with atomic_open(array_path(prefix, name), "wb") as f:
        np.save(f, array, allow_pickle=False)


def write(
    prefix: str | os.PathLike,
    content: dict[str, Any],
    records: dict[str, np.ndarray],
    samples: np.ndarray,
    row_sizes: Sequence[int],
    stats: dict[str, Any],
) -> dict[str, Any]:
    """Write the cache of `samples` (record ids in row order; rows of `row_sizes` samples)
    from `records` (`tokens`, `loss_mask`: the encoded records end to end; `offsets`, `lengths`
    per record); return its stamp."""
    stamp_path(prefix).unlink(missing_ok=True)  # a stale stamp must not vouch for new arrays
    lengths = records["lengths"][samples]
    sample_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    row_offsets = np.concatenate([[0], np.cumsum(row_sizes)]).astype(np.int64)
    total = int(sample_offsets[-1])
    tokens, loss_mask = records["tokens"], records["loss_mask"]
    with (
        atomic_open(array_path(prefix, "tokens"), "wb") as tokens_file,
        atomic_open(array_path(prefix, "loss_mask"), "wb") as mask_file,
    ):
        _write_header(tokens_file, tokens.dtype, total)
        _write_header(mask_file, loss_mask.dtype, total)
        for first in range(0, len(samples), WRITE_BLOCK):
            block = samples[first : first + WRITE_BLOCK]
            index = gather_index(records["offsets"][block], records["lengths"][block])
            tokens_file.write(np.ascontiguousarray(tokens[index]).tobytes())
            mask_file.write(np.ascontiguousarray(loss_mask[index]).tobytes())
    _save(prefix, "sample_offsets", sample_offsets)
    _save(prefix, "row_offsets", row_offsets)
    stamp = {
        "content": content,
        "bytes": {name: array_path(prefix, name).stat().st_size for name in ARRAYS},
        "rows": len(row_offsets) - 1,
        "samples": len(samples),
        "tokens": total,
        "max_row_samples": int(max(row_sizes)),
        "stats": stats,
    }
    atomic_write_text(stamp_path(prefix), json.dumps(stamp, ensure_ascii=False, indent=1))
    return stamp
