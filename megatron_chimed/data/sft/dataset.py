"""The packed SFT dataset: built once (build.py), then memory-mapped by every rank (cache.py).

The cache is named by a hash of everything that changes its content (sources and their files'
size and mtime, template, tokenizer, seq_length, seed, truncation flag); its stamp, written
last, records that content, so a cache of other inputs is never read and a half-written one
is rebuilt. Rows are fixed once built, so a resumed run that skips its consumed samples sees
exactly the rows the uninterrupted run would have seen. The packing mode is applied when a row
is read, so `concat` and `isolated` share one cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatron_chimed.data.sft import cache
from megatron_chimed.data.sft.build import build_cache
from megatron_chimed.data.sft.config import SFTDataConfig
from megatron_chimed.data.sft.packing import layout_row
from megatron_chimed.data.sft.selection import choose

__all__ = ["Epochs", "PackedSFTDataset", "cache_key", "choose", "packed_sft_dataset"]

# Bump when the cache layout, the encoding or a reader changes. 2: MC speakers are matched
# without surrounding whitespace (and unknown ones refused); readers count dropped turns.
# 3: memory-mapped .npy arrays and a JSON stamp instead of one .npz.
CACHE_VERSION = 3
# Where the cache goes when neither the data config nor the caller names a folder. A stage passes
# its run's own folder (`<run_dir>/cache/sft`), so that a run writes only under run_dir.
DEFAULT_CACHE_DIR = "runs/cache/sft"
Sample = tuple[np.ndarray, np.ndarray]  # (token ids, loss mask)


def cache_content(cfg: SFTDataConfig, tokenizer: Any) -> dict[str, Any]:
    """What the cache is made from: a cache made from anything else is not used."""
    files = [
        {**asdict(s), "size": os.stat(s.path).st_size, "mtime_ns": os.stat(s.path).st_mtime_ns}
        for s in cfg.sources
    ]
    return {
        "version": CACHE_VERSION,
        "sources": files,
        "template": cfg.template,
        "seq_length": cfg.seq_length,
        "truncate_response": cfg.truncate_response,
        "seed": cfg.seed,
        "tokenizer": tokenizer.unique_identifiers,
    }


def cache_key(cfg: SFTDataConfig, tokenizer: Any) -> str:
    content = json.dumps(cache_content(cfg, tokenizer), sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:20]


class PackedSFTDataset(torch.utils.data.Dataset):
    """Row i: tokens, labels, loss_mask, position_ids [seq_length] and cu_seqlens, padded with
    -1 to the longest row's count so that rows batch together.

    The arrays are memory-mapped (`prefix`: the cache's path without its suffixes): the ranks
    of a node share one copy in the page cache, and a pickled dataset (a DataLoader worker
    started by spawn) reopens the files instead of carrying their content along."""

    def __init__(self, prefix: str | Path, seq_length: int, pad: int, packing: str) -> None:
        self.prefix = Path(prefix)
        stamp = cache.read_stamp(self.prefix)
        if stamp is None:
            raise FileNotFoundError(f"{cache.stamp_path(self.prefix)}: no packed SFT cache")
        self.stats = stamp["stats"]
        self.seq_length, self.pad, self.isolated = seq_length, pad, packing == "isolated"
        self.max_segments = stamp["max_row_samples"] + 2 if self.isolated else 2
        self._open()

    def _open(self) -> None:
        arrays = cache.open_arrays(self.prefix)
        self.tokens, self.loss_mask = arrays["tokens"], arrays["loss_mask"]
        self.sample_offsets, self.row_offsets = arrays["sample_offsets"], arrays["row_offsets"]

    def __getstate__(self) -> dict[str, Any]:
        arrays = ("tokens", "loss_mask", "sample_offsets", "row_offsets")
        return {k: v for k, v in self.__dict__.items() if k not in arrays}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.row_offsets) - 1

    def samples(self, row: int) -> list[Sample]:
        first, last = self.row_offsets[row], self.row_offsets[row + 1]
        spans = zip(self.sample_offsets[first:last], self.sample_offsets[first + 1 : last + 1])
        return [(self.tokens[a:b], self.loss_mask[a:b]) for a, b in spans]

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        out = layout_row(self.samples(row), self.seq_length, self.pad, self.isolated)
        cu = np.full(self.max_segments, -1, dtype=np.int32)
        cu[: len(out["cu_seqlens"])] = out["cu_seqlens"]
        out["cu_seqlens"] = cu
        return {k: torch.from_numpy(v) for k, v in out.items()}

    def non_pad_fraction(self) -> float:
        return len(self.tokens) / (len(self) * (self.seq_length + 1))


class Epochs(torch.utils.data.Dataset):
    """`num_samples` rows: the packed rows again and again, epoch 0 in their stored (seeded)
    order, every later epoch in a fresh seeded permutation. Item i depends only on i, so a run
    resumed at any consumed-sample count reads exactly what the uninterrupted run read."""

    def __init__(self, rows: PackedSFTDataset, num_samples: int, seed: int) -> None:
        self.rows, self.num_samples, self.seed = rows, num_samples, seed
        self._epoch, self._order = 0, np.arange(len(rows))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, offset = divmod(index, len(self.rows))
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch = epoch
            self._order = rng.permutation(len(self.rows)) if epoch else np.arange(len(self.rows))
        return self.rows[int(self._order[offset])]


def cache_folder(cfg: SFTDataConfig, default: str | os.PathLike = DEFAULT_CACHE_DIR) -> Path:
    """The folder of the packed cache: `data.cache_dir` if set, else `default`."""
    return Path(cfg.cache_dir if cfg.cache_dir is not None else default)


def packed_sft_dataset(
    cfg: SFTDataConfig, tokenizer, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR
) -> PackedSFTDataset:
    """Open the cached packed dataset, building it first if needed (rank 0 builds, with
    `data.workers` processes, while the other ranks wait; then every rank maps the same
    files). `cache_dir` is the folder used when the config's `cache_dir` is null: a stage
    passes `<run_dir>/cache/sft`."""
    prefix = cache_folder(cfg, cache_dir) / f"sft_{cache_key(cfg, tokenizer)}"
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_rank() == 0:
        content = lambda: cache_content(cfg, tokenizer)
        if not cache.ready(prefix, content()):
            build_cache(cfg, tokenizer, prefix, content)
    if distributed:
        torch.distributed.barrier()
    return PackedSFTDataset(prefix, cfg.seq_length, tokenizer.pad, cfg.packing)
