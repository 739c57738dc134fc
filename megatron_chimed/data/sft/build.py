"""Build the packed SFT cache: read -> sample -> encode (worker processes) -> shuffle -> pack.

Per source, in config order, one seeded generator draws the samples (selection.py): over the
records the encoder keeps, in reading order. For a source whose draw may leave records out
(`max_samples`, or a `weight` below 1) the kept records are found before encoding: records
sure to be kept are set aside in a scratch file, the few that cannot be told are encoded; after
the draw only the records drawn are encoded. The statistics count the readers' and the
encoder's drops for every record read, the kept/truncated events for the records drawn,
`samples` for the draws (repeats included). Encoded records wait in scratch files beside the
cache, not in memory, and are gathered from there in row order into the cache (cache.py).
"""

from __future__ import annotations

import json
import logging
import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from megatron_chimed.data.sft import cache
from megatron_chimed.data.sft.config import SFTDataConfig, SourceConfig
from megatron_chimed.data.sft.encode import Encoder, EncodeStats, drop_reason
from megatron_chimed.data.sft.packing import first_fit
from megatron_chimed.data.sft.pool import (
    SMALL_INPUT_BYTES,
    EncodedChunk,
    Job,
    default_workers,
    encoding_map,
    jobs,
)
from megatron_chimed.data.sft.readers import read_source
from megatron_chimed.data.sft.selection import KeepCheck, choose, selects_subset
from megatron_chimed.data.template import get_template

log = logging.getLogger(__name__)

DROPPED, SURE = -1, -2  # a record's state before it has a record id in the scratch files
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one encoder, reused


class Scratch:
    """The files of one build beside the cache, removed when it ends: the encoded records end
    to end (a paper-scale mix is gigabytes), and the records a draw may want, as JSON, so that
    they are encoded without reading their source again."""

    def __init__(self, prefix: Path, dtype: np.dtype) -> None:
        tag = f"{prefix.name}.scratch{os.getpid()}"
        names = ("tokens", "loss_mask", "records")
        self.paths = {k: prefix.parent / f".{tag}.{k}" for k in names}
        self.dtype, self.count, self.lengths = dtype, 0, [np.zeros(0, np.int64)]
        self.kept_bytes = 0
        prefix.parent.mkdir(parents=True, exist_ok=True)
        self.files = {k: open(p, "wb") for k, p in self.paths.items()}

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        for k, f in self.files.items():
            f.close()
            self.paths[k].unlink(missing_ok=True)

    def append(self, chunk: EncodedChunk) -> np.ndarray:
        """Store a chunk's kept records; their new record ids (-1 for a dropped record)."""
        if chunk.tokens.size and int(chunk.tokens.max()) > np.iinfo(self.dtype).max:
            raise ValueError(f"SFT data: token id {int(chunk.tokens.max())} beyond the "
                             f"tokenizer's vocabulary ({self.dtype} cache)")  # fmt: skip
        self.files["tokens"].write(chunk.tokens.astype(self.dtype).tobytes())
        self.files["loss_mask"].write(chunk.loss_mask.tobytes())
        kept = chunk.lengths > 0
        ids = np.full(len(kept), DROPPED, dtype=np.int64)
        ids[kept] = np.arange(self.count, self.count + int(kept.sum()))
        self.count += int(kept.sum())
        self.lengths.append(chunk.lengths[kept])
        return ids

    def keep(self, record: dict, instruction: str | None) -> tuple[int, int]:
        """Set a record aside; its (offset, size) for `kept`."""
        data = _JSON.encode([record, instruction]).encode()
        self.files["records"].write(data)
        self.kept_bytes += len(data)
        return self.kept_bytes - len(data), len(data)

    def kept(self, spans: Iterable[tuple[int, int]]) -> Iterator[tuple[dict, str | None]]:
        """The records set aside at these (offset, size) spans."""
        self.files["records"].flush()
        with open(self.paths["records"], "rb") as f:
            for offset, size in spans:
                f.seek(offset)
                record, instruction = json.loads(f.read(size))
                yield record, instruction

    def records(self) -> dict[str, np.ndarray]:
        """tokens and loss_mask (memory-mapped), offsets and lengths of the records stored."""
        for f in self.files.values():
            f.flush()
        lengths = np.concatenate(self.lengths)
        arrays = {"lengths": lengths, "offsets": np.cumsum(lengths) - lengths}
        for key, dtype in (("tokens", self.dtype), ("loss_mask", np.dtype(np.uint8))):
            empty = not lengths.sum()
            arrays[key] = np.zeros(0, dtype) if empty else np.memmap(self.paths[key], dtype, "r")
        return arrays


@dataclass
class _Build:
    encoder: Encoder
    check: KeepCheck
    encode: Callable[[Iterable[Job]], Iterator[EncodedChunk]]
    scratch: Scratch
    stats: EncodeStats


def _instruction(record: dict, source: SourceConfig) -> str | None:
    # A record's own system prompt (alpaca/sharegpt/qa `system`) replaces the source's.
    return record.get("system") or source.instruction or None


def _read(source: SourceConfig, stats: EncodeStats) -> Iterator[dict]:
    records = read_source(source, stats)
    return tqdm(records, desc=f"SFT {source.name}", unit=" records", mininterval=10)


def _encode_all(build: _Build, source: SourceConfig, rng: np.random.Generator) -> np.ndarray:
    """Encode every record, then draw among the kept ones: their record ids."""
    items = ((i, r, _instruction(r, source)) for i, r in enumerate(_read(source, build.stats)))
    kept = [np.zeros(0, np.int64)]
    for chunk in build.encode(jobs(items)):
        ids = build.scratch.append(chunk)
        for event in chunk.events:
            build.stats.add(source.name, event)
        kept.append(ids[ids >= 0])
    every = np.concatenate(kept)
    picked = choose(len(every), source.max_samples, source.weight, rng)
    build.stats.add(source.name, "samples", len(picked))
    return every[picked]


def _encode_drawn(build: _Build, source: SourceConfig, rng: np.random.Generator) -> np.ndarray:
    """Find the kept records without encoding the sure ones (set aside in the scratch files),
    draw, encode the ones drawn."""
    name, state = source.name, array("q")  # per record read: record id, SURE or DROPPED
    # Where each record read was set aside (offset, size), for the sure ones.
    offsets, sizes = array("q"), array("q")
    events: dict[int, str] = {}  # the event of each unsure record that was kept

    def unsure() -> Iterator[tuple[int, dict, str | None]]:
        for i, record in enumerate(_read(source, build.stats)):
            instruction = _instruction(record, source)
            reason = drop_reason(record)
            sure = reason is None and build.check.surely_kept(record, instruction)
            offset, size = build.scratch.keep(record, instruction) if sure else (0, 0)
            state.append(SURE if sure else DROPPED)  # unsure: until its encoding says
            offsets.append(offset)
            sizes.append(size)
            if reason is not None:
                build.stats.add(name, reason)
            elif not sure:
                yield i, record, instruction

    for chunk in build.encode(jobs(unsure())):
        for i, record_id, event in zip(chunk.tag, build.scratch.append(chunk), chunk.events):
            if record_id == DROPPED:
                build.stats.add(name, event)
            else:
                state[i], events[int(i)] = int(record_id), event
    states = np.array(state, dtype=np.int64)
    kept = np.flatnonzero(states != DROPPED)
    picked = kept[choose(len(kept), source.max_samples, source.weight, rng)]
    build.stats.add(name, "samples", len(picked))
    drawn = np.unique(picked)
    for i in drawn[states[drawn] >= 0]:
        build.stats.add(name, events[int(i)])
    wanted = drawn[states[drawn] == SURE].tolist()
    records = build.scratch.kept((offsets[i], sizes[i]) for i in wanted)
    drawn_records = ((i, *item) for i, item in zip(wanted, records))
    for chunk in build.encode(jobs(drawn_records)):
        for i, record_id, event in zip(chunk.tag, build.scratch.append(chunk), chunk.events):
            if record_id == DROPPED:  # KeepCheck's bound is a proof: this is a bug, not data
                raise RuntimeError(f"SFT data: {name} record {i} was sure to be kept, but the "
                                   f"encoder says {event}")  # fmt: skip
            states[i] = record_id
            build.stats.add(name, event)
    return states[picked]


def encode_sources(
    cfg: SFTDataConfig, tokenizer: Any, scratch: Scratch, workers: int = 1
) -> tuple[np.ndarray, EncodeStats]:
    """Every source's samples as record ids into `scratch`, in config order, and the stats."""
    template = get_template(cfg.template)
    encoder = Encoder(template, tokenizer, cfg.seq_length + 1, cfg.truncate_response)
    rng, stats, check = np.random.default_rng(cfg.seed), EncodeStats(), KeepCheck(encoder)
    samples = [np.zeros(0, np.int64)]
    with encoding_map(encoder, workers) as encode:
        build = _Build(encoder, check, encode, scratch, stats)
        for source in cfg.sources:
            drawn = check.supported and selects_subset(source.max_samples, source.weight)
            samples.append((_encode_drawn if drawn else _encode_all)(build, source, rng))
    return np.concatenate(samples), stats


def pack_order(lengths: np.ndarray, capacity: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Seeded shuffle, first-fit packing, seeded shuffle of the rows: the samples' positions
    in row order, and each row's sample count."""
    rng = np.random.default_rng([seed, 1])
    shuffled = rng.permutation(len(lengths))
    bins = first_fit(lengths[shuffled].tolist(), capacity)
    bins = [bins[i] for i in rng.permutation(len(bins))]
    order = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=len(lengths))
    return shuffled[order], [len(b) for b in bins]


def resolve_workers(cfg: SFTDataConfig) -> int:
    """`data.workers`, else this rank's share of the node's cores; one for a small mix."""
    if cfg.workers is not None:
        return cfg.workers
    size = sum(Path(s.path).stat().st_size for s in cfg.sources)
    return 1 if size < SMALL_INPUT_BYTES else default_workers()


def build_cache(
    cfg: SFTDataConfig,
    tokenizer: Any,
    prefix: Path,
    content: Callable[[], dict[str, Any]],
    workers: int | None = None,
) -> dict[str, Any]:
    """Encode, pack and write the cache at `prefix`; its stamp. `content()` says what the
    cache is made from (the files' sizes and times among it): a file that changed while it
    was read would leave a cache that does not match its stamp, so that is an error."""
    before = content()
    workers = resolve_workers(cfg) if workers is None else workers
    with Scratch(prefix, cache.token_dtype(tokenizer.vocab_size)) as scratch:
        samples, stats = encode_sources(cfg, tokenizer, scratch, workers)
        if not len(samples):
            raise ValueError(f"SFT data: no samples left after encoding ({stats.as_dict()})")
        if content() != before:
            raise ValueError("SFT data: a source file changed while the cache was built; "
                             "build it again")  # fmt: skip
        records = scratch.records()
        order, row_sizes = pack_order(records["lengths"][samples], cfg.seq_length + 1, cfg.seed)
        stamp = cache.write(prefix, before, records, samples[order], row_sizes, stats.as_dict())
    log.info("SFT data: %d samples in %d rows (%d workers) -> %s.*; %s", stamp["samples"],
             stamp["rows"], workers, prefix, stats.as_dict())  # fmt: skip
    return stamp
