"""Encode SFT records on worker processes of the building rank, chunk by chunk, in order.

The building rank reads; chunks of records go to a pool of spawned workers (each loads the
tokenizer from its folder once) that return each chunk's ids as flat arrays, which pickle far
faster than one list per record. Results come back in input order and a record is encoded by
the same `Encoder` either way, so the cache does not depend on the worker count. The other
ranks wait at the barrier meanwhile, so the default uses this rank's share of the node's cores:
the cores it may run on (`os.sched_getaffinity`) over the node's ranks (`LOCAL_WORLD_SIZE`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from megatron_chimed.data.sft.encode import Encoder
from megatron_chimed.data.template import get_template
from megatron_chimed.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

CHUNK_RECORDS = 512  # big enough to amortise pickling, small enough to keep workers busy
# Below this much input (all sources' files) the default encodes in process: starting workers
# (each imports torch and loads the tokenizer) costs more than it saves.
SMALL_INPUT_BYTES = 4 << 20
AHEAD_PER_WORKER = 3  # chunks queued per worker: none idles while the reader catches up

Item = tuple[dict, str | None]  # (record, instruction)
Job = tuple[Any, list[Item]]  # (tag returned unchanged with the result, items)


@dataclass
class EncodedChunk:
    """One job's records: the kept ones' ids and loss masks end to end, per record its length
    (0: dropped) and the encoder's event (kept, truncated_*, dropped_*)."""

    tag: Any
    tokens: np.ndarray  # int32
    loss_mask: np.ndarray  # uint8
    lengths: np.ndarray  # int64
    events: list[str]


class _LastEvent:
    """Stands in for EncodeStats in one encoder call: the encoder reports one event a record."""

    event = ""

    def add(self, source: str, event: str, count: int = 1) -> None:
        self.event = event


def encode_job(encoder: Encoder, job: Job) -> EncodedChunk:
    tag, items = job
    tokens: list[int] = []
    masks: list[int] = []
    lengths, events, last = [], [], _LastEvent()
    for record, instruction in items:
        out = encoder(record, instruction, last)  # type: ignore[arg-type]
        events.append(last.event)
        lengths.append(0 if out is None else len(out[0]))
        if out is not None:
            tokens += out[0]
            masks += out[1]
    return EncodedChunk(
        tag,
        np.array(tokens, dtype=np.int32),
        np.array(masks, dtype=np.uint8),
        np.array(lengths, dtype=np.int64),
        events,
    )


def jobs(items: Iterable[tuple[int, dict, str | None]]) -> Iterator[Job]:
    """`(index, record, instruction)` -> jobs of CHUNK_RECORDS items tagged with their indices."""
    tags: list[int] = []
    chunk: list[Item] = []
    for index, record, instruction in items:
        tags.append(index)
        chunk.append((record, instruction))
        if len(chunk) == CHUNK_RECORDS:
            yield np.array(tags, dtype=np.int64), chunk
            tags, chunk = [], []
    if chunk:
        yield np.array(tags, dtype=np.int64), chunk


def default_workers() -> int:
    """This rank's share of the node's cores: the ones it may use over the node's ranks."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    return max(1, (cores or 1) // max(1, local_ranks))


_worker_encoder: Encoder | None = None


def _init_worker(template: str, tokenizer_dir: str, budget: int, truncate: bool) -> None:
    global _worker_encoder
    _worker_encoder = Encoder(get_template(template), load_tokenizer(tokenizer_dir), budget,
                              truncate)  # fmt: skip


def _encode_in_worker(job: Job) -> EncodedChunk:
    assert _worker_encoder is not None, "worker not initialised"
    return encode_job(_worker_encoder, job)


@contextlib.contextmanager
def encoding_map(
    encoder: Encoder, workers: int
) -> Iterator[Callable[[Iterable[Job]], Iterator[EncodedChunk]]]:
    """A lazy, order-keeping `map(jobs) -> chunks` on `workers` processes (in this process for
    one). Jobs are drawn from the iterable in this thread, a few per worker ahead of the result
    being returned, so a reading generator streams (and its errors are raised here, as they
    are), and memory holds a bounded number of chunks whatever the input's size."""
    if workers > 1:
        tokenizer = encoder.tokenizer
        # Workers reload the tokenizer from its folder: it must be the very one given here.
        same = load_tokenizer(tokenizer.directory).unique_identifiers
        if same != tokenizer.unique_identifiers:
            log.warning("SFT data: %s does not reload as the tokenizer given; encoding in "
                        "one process", tokenizer.directory)  # fmt: skip
            workers = 1
    if workers <= 1:
        yield lambda job_list: (encode_job(encoder, job) for job in job_list)
        return
    args = (encoder.template.name, str(encoder.tokenizer.directory), encoder.budget,
            encoder.truncate_response)  # fmt: skip
    # spawn, not fork: the training process holds torch threads that fork would copy.
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, args)

    def ordered(job_list: Iterable[Job]) -> Iterator[EncodedChunk]:
        pending: collections.deque = collections.deque()
        for job in job_list:
            pending.append(pool.apply_async(_encode_in_worker, (job,)))
            if len(pending) >= AHEAD_PER_WORKER * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    try:
        yield ordered
    finally:
        pool.terminate()
        pool.join()
