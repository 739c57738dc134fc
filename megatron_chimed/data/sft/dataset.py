"""The packed SFT dataset: read -> encode -> weight -> shuffle -> pack, cached on disk.

The cache is one `.npz` named by a hash of everything that changes its content (sources and
their files' size and mtime, template, tokenizer, seq_length, seed, truncation flag). It is
written under a temporary name and renamed, so a job killed while building leaves no half file.
Rows are fixed once built, so a resumed run that skips its consumed samples sees exactly the
rows the uninterrupted run would have seen. The packing mode is applied when a row is read, so
`concat` and `isolated` share one cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from megatron_chimed.atomic import atomic_open
from megatron_chimed.data.sft.config import SFTDataConfig
from megatron_chimed.data.sft.encode import Encoder, EncodeStats
from megatron_chimed.data.sft.packing import first_fit, layout_row
from megatron_chimed.data.sft.readers import read_source
from megatron_chimed.data.template import get_template

log = logging.getLogger(__name__)

# Bump when the cache layout, the encoding or a reader changes. 2: MC speakers are matched
# without surrounding whitespace (and unknown ones refused); readers count dropped turns.
CACHE_VERSION = 2
# Where the cache goes when neither the data config nor the caller names a folder. A stage passes
# its run's own folder (`<run_dir>/cache/sft`), so that a run writes only under run_dir.
DEFAULT_CACHE_DIR = "runs/cache/sft"
Sample = tuple[np.ndarray, np.ndarray]  # (token ids, loss mask)


def cache_key(cfg: SFTDataConfig, tokenizer) -> str:
    files = [
        {**asdict(s), "size": os.stat(s.path).st_size, "mtime_ns": os.stat(s.path).st_mtime_ns}
        for s in cfg.sources
    ]
    content = {
        "version": CACHE_VERSION,
        "sources": files,
        "template": cfg.template,
        "seq_length": cfg.seq_length,
        "truncate_response": cfg.truncate_response,
        "seed": cfg.seed,
        "tokenizer": tokenizer.unique_identifiers,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]


def choose(count: int, max_samples: int | None, weight: float, rng: np.random.Generator):
    """Indices of a source's samples after the cap (a random subset) and the weight (whole
    repeats plus a random fraction)."""
    base = np.arange(count)
    if max_samples is not None and max_samples < count:
        base = np.sort(rng.permutation(count)[:max_samples])
    whole, fraction = divmod(weight, 1.0)
    extra = rng.permutation(base)[: round(fraction * len(base))]
    return np.concatenate([base] * int(whole) + [extra])


def encode_sources(cfg: SFTDataConfig, tokenizer) -> tuple[list[Sample], EncodeStats]:
    encoder = Encoder(
        get_template(cfg.template), tokenizer, cfg.seq_length + 1, cfg.truncate_response
    )
    rng = np.random.default_rng(cfg.seed)
    stats, samples = EncodeStats(), []
    for source in cfg.sources:
        encoded = []
        records = read_source(source, stats)
        for record in tqdm(records, desc=f"SFT {source.name}", unit=" records", mininterval=10):
            # A record's own system prompt (alpaca/sharegpt/qa `system`) replaces the source's.
            out = encoder(record, record.get("system") or source.instruction or None, stats)
            if out is not None:
                encoded.append((np.array(out[0], np.int32), np.array(out[1], np.uint8)))
        picked = choose(len(encoded), source.max_samples, source.weight, rng)
        samples += [encoded[i] for i in picked]
        stats.add(source.name, "samples", len(picked))
    return samples, stats


def build_cache(cfg: SFTDataConfig, tokenizer, path: Path) -> None:
    samples, stats = encode_sources(cfg, tokenizer)
    if not samples:
        raise ValueError(f"SFT data: no samples left after encoding ({stats.as_dict()})")
    rng = np.random.default_rng([cfg.seed, 1])
    samples = [samples[i] for i in rng.permutation(len(samples))]
    bins = first_fit([len(ids) for ids, _ in samples], cfg.seq_length + 1)
    bins = [bins[i] for i in rng.permutation(len(bins))]
    order = [i for b in bins for i in b]
    lengths = np.array([len(samples[i][0]) for i in order], dtype=np.int64)
    arrays = {
        "tokens": np.concatenate([samples[i][0] for i in order]),
        "loss_mask": np.concatenate([samples[i][1] for i in order]),
        "sample_offsets": np.concatenate([[0], np.cumsum(lengths)]),
        "row_offsets": np.concatenate([[0], np.cumsum([len(b) for b in bins])]),
        "stats": np.array(json.dumps(stats.as_dict(), ensure_ascii=False)),
    }
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    log.info(
        "SFT data: %d samples in %d rows -> %s; %s", len(order), len(bins), path, stats.as_dict()
    )


class PackedSFTDataset(torch.utils.data.Dataset):
    """Row i: tokens, labels, loss_mask, position_ids [seq_length] and cu_seqlens, padded with
    -1 to the longest row's count so that rows batch together."""

    def __init__(self, path: str | Path, seq_length: int, pad: int, packing: str) -> None:
        with np.load(path, allow_pickle=False) as z:
            self.tokens, self.loss_mask = z["tokens"], z["loss_mask"]
            self.sample_offsets, self.row_offsets = z["sample_offsets"], z["row_offsets"]
            self.stats = json.loads(str(z["stats"]))
        self.seq_length, self.pad, self.isolated = seq_length, pad, packing == "isolated"
        per_row = np.diff(self.row_offsets)
        self.max_segments = int(per_row.max()) + 2 if self.isolated else 2

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
    """Load the cached packed dataset, building it first if needed (rank 0 builds while the
    other ranks wait, then everyone reads the same file). `cache_dir` is the folder used when
    the config's `cache_dir` is null: a stage passes `<run_dir>/cache/sft`."""
    path = cache_folder(cfg, cache_dir) / f"sft_{cache_key(cfg, tokenizer)}.npz"
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not path.is_file() and (not distributed or torch.distributed.get_rank() == 0):
        build_cache(cfg, tokenizer, path)
    if distributed:
        torch.distributed.barrier()
    return PackedSFTDataset(path, cfg.seq_length, tokenizer.pad, cfg.packing)
