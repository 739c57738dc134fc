"""Text records -> megatron-core indexed dataset (`PREFIX_<key>_document.bin/.idx`), EOD after
each document.

Inputs are JSON Lines, JSON arrays, CSV / TSV or Parquet (data/records.py; the type from the
suffix, and a `.json` that is no array is JSON Lines, as the CMD corpus names it; another suffix
is read as JSON Lines). Each record's `json_keys` fields (columns) are its texts.

Streams any number of files of any size: JSON Lines are read lazily and sent in chunks to worker
processes that parse and tokenize them (one tokenizer per worker); the other types are read
record by record through data/records.py in the parent, and only their texts go to the workers.
The parent appends the returned id arrays, in input order, so the output does not depend on
`workers`. Both files are
written under temporary names and renamed at the end: an interrupted run leaves no half dataset
that a training job could pick up, and a run that found no document writes nothing (megatron
cannot even open an empty dataset). Input is UTF-8; a BOM at the start of the file, or of any
line (concatenated parts), is ignored, as every other reader of the project does.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.data import records
from megatron_chimed.data.jsonio import BOM, DataError, not_utf8
from megatron_chimed.tokenizer import Tokenizer, load_tokenizer

CHUNK_LINES = 512  # big enough to amortise inter-process pickling, small enough to stream


class MalformedRecord(ValueError):
    """A line, row or element that is not a record with the expected string fields
    (file:line, or file[index], then the reason)."""


class NoDocuments(ValueError):
    """The inputs held no document (empty, blank, or every line skipped): nothing is written."""


@dataclass
class PreprocessStats:
    documents: int = 0
    tokens: int = 0
    skipped: int = 0  # malformed lines passed over with skip_bad
    per_file: dict[str, int] = field(default_factory=dict)  # documents per input file


def output_prefix(prefix: str | os.PathLike, key: str) -> str:
    """Megatron-LM's naming: `--output-prefix out/cmd` + key `text` -> `out/cmd_text_document`."""
    return f"{prefix}_{key}_document"


@dataclass(frozen=True)
class _Chunk:
    path: str
    first_line: int
    lines: list[str]  # JSON Lines, parsed by a worker
    # Records read in the parent (other file types): their texts per key and errors, ready.
    parsed: tuple[dict[str, list[str]], list[str]] | None = None


def _chunks(paths: Sequence[str | os.PathLike], keys: Sequence[str]) -> Iterator[_Chunk]:
    for path in paths:
        try:
            kind = records.read_as(path)
        except ValueError:  # another suffix: JSON Lines, as this tool always read
            kind = "jsonl"
        if kind == "jsonl":
            yield from _line_chunks(path)
        else:
            yield from _record_chunks(path, keys)


def _line_chunks(path: str | os.PathLike) -> Iterator[_Chunk]:
    # surrogateescape: a line with invalid UTF-8 becomes an error naming its file and line in
    # `_parse` (skippable with skip_bad) instead of a decoder error at a byte offset.
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines: list[str] = []
        first = 1
        for lineno, line in enumerate(f, start=1):
            if not lines:
                first = lineno
            lines.append(line)
            if len(lines) == CHUNK_LINES:
                yield _Chunk(str(path), first, lines)
                lines = []
        if lines:
            yield _Chunk(str(path), first, lines)


def _record_chunks(path: str | os.PathLike, keys: Sequence[str]) -> Iterator[_Chunk]:
    """A JSON array, CSV/TSV or Parquet file through data/records.py. A fault of the file's
    structure (a broken array, a row with more cells than the header) ends the file there:
    MalformedRecord, even with skip_bad."""
    texts: dict[str, list[str]] = {key: [] for key in keys}
    errors: list[str] = []
    count = 0
    try:
        for where, record in records.iter_records(path):
            _take(where, record, keys, texts, errors)
            count += 1
            if count == CHUNK_LINES:
                yield _Chunk(str(path), 0, [], (texts, errors))
                texts, errors, count = {key: [] for key in keys}, [], 0
    except DataError as err:
        raise MalformedRecord(str(err)) from None
    if count:
        yield _Chunk(str(path), 0, [], (texts, errors))


def _take(
    where: str, record: Any, keys: Sequence[str], texts: dict[str, list[str]], errors: list[str]
) -> None:
    """Append the record's text per key, or one `where: reason` error."""
    if not isinstance(record, dict):
        errors.append(f"{where}: expected a JSON object, got {type(record).__name__}")
        return
    bad = [k for k in keys if not isinstance(record.get(k), str)]
    if bad:
        # The usual cause is a corpus whose text lives under another name: say which knob.
        errors.append(
            f"{where}: field {bad[0]!r} is missing or not a string (the text field is "
            f"set by --json-keys, or pipeline.pretrain_text_field; record has {sorted(record)})"
        )
        return
    for key in keys:
        texts[key].append(record[key])


def _parse(chunk: _Chunk, keys: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Texts per key of the well-formed records, and one `file:line: reason` per bad line."""
    if chunk.parsed is not None:
        return chunk.parsed
    texts: dict[str, list[str]] = {key: [] for key in keys}
    errors: list[str] = []
    for offset, line in enumerate(chunk.lines):
        line = line.lstrip(BOM)
        if not line.strip():
            continue
        where = f"{chunk.path}:{chunk.first_line + offset}"
        if (bad := not_utf8(where, line)) is not None:
            errors.append(str(bad))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append(f"{where}: not valid JSON ({err.msg} at column {err.colno})")
            continue
        _take(where, record, keys, texts, errors)
    return texts, errors


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer_dir)


def _encode(
    job: tuple[_Chunk, tuple[str, ...]],
) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """The chunk's file and, per key, its documents (each + EOD) as ONE token array and their
    lengths; one array pickles and writes far faster than hundreds of small ones."""
    chunk, keys = job
    texts, errors = _parse(chunk, keys)
    eod = _worker_tokenizer.eod
    docs = {}
    for key, batch in texts.items():
        encoded = [[*ids, eod] for ids in _worker_tokenizer.encode_batch(batch)]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter((t for ids in encoded for t in ids), dtype=np.int32, count=lengths.sum())
        docs[key] = (flat, lengths)
    return chunk.path, docs, errors


def _add_documents(builder: Any, flat: np.ndarray, lengths: np.ndarray) -> None:
    """What megatron's `add_document` does once per document (one sequence each), for a
    whole chunk: the builder has no batch call, and per-document calls dominate run time."""
    builder.data_file.write(flat.astype(builder.dtype, copy=False).tobytes(order="C"))
    first = len(builder.sequence_lengths)
    builder.sequence_lengths.extend(lengths.tolist())
    builder.document_indices.extend(range(first + 1, first + len(lengths) + 1))


def preprocess(
    inputs: Sequence[str | os.PathLike],
    prefix: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    json_keys: Sequence[str] = ("text",),
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    force: bool = False,
) -> PreprocessStats:
    """Tokenize every record's `json_keys` into one indexed dataset per key.

    A malformed line raises MalformedRecord naming file and line, unless `skip_bad`, in which
    case it is counted in the returned stats. Inputs without any document raise NoDocuments
    naming them, and nothing is written. Outputs already complete for the same inputs (path,
    size, mtime), tokenizer and keys are kept, not redone (`force` redoes them): the stamp
    `PREFIX.preprocess.json`, written last, says what they were made from.
    """
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    for path in inputs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: input file not found")
    tokenizer = load_tokenizer(tokenizer_dir)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    keys = tuple(json_keys)
    final = {key: output_prefix(prefix, key) for key in keys}
    stamp_path, stamp = Path(f"{prefix}.preprocess.json"), _stamp(inputs, tokenizer, keys, skip_bad)
    if not force and _done(stamp_path, stamp, final):
        print(f"preprocess: {prefix} is complete for these inputs and tokenizer; skipped "
              "(--force redoes it)", flush=True)  # fmt: skip
        return PreprocessStats(**json.loads(stamp_path.read_text())["stats"])
    tmp = {key: f"{p}.tmp{os.getpid()}" for key, p in final.items()}
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    builders = {key: IndexedDatasetBuilder(tmp[key] + ".bin", dtype=dtype) for key in keys}
    stats = PreprocessStats(per_file={str(path): 0 for path in inputs})
    jobs = ((chunk, keys) for chunk in _chunks(inputs, keys))
    bar = tqdm(unit="doc", desc="preprocess", disable=not progress, smoothing=0.1)
    try:
        with _ordered_map(workers, str(tokenizer_dir)) as ordered_map:
            for path, docs, errors in ordered_map(_encode, jobs):
                if errors and not skip_bad:
                    raise MalformedRecord(errors[0])
                stats.skipped += len(errors)
                for key, (flat, lengths) in docs.items():
                    _add_documents(builders[key], flat, lengths)
                flat, lengths = docs[keys[0]]
                stats.documents += len(lengths)
                stats.per_file[path] += len(lengths)
                stats.tokens += flat.size
                bar.update(len(lengths))
                bar.set_postfix(tok_s=f"{stats.tokens / max(bar.format_dict['elapsed'], 1e-9):.0f}")
        if not stats.documents:
            names = ", ".join(str(path) for path in inputs)
            raise NoDocuments(
                f"{names}: no documents (empty or blank input, {stats.skipped} malformed line(s) "
                "skipped); nothing written"
            )
        for key in keys:
            builders[key].finalize(tmp[key] + ".idx")
            # .bin first: a reader that finds the .idx finds its .bin.
            os.replace(tmp[key] + ".bin", final[key] + ".bin")
            os.replace(tmp[key] + ".idx", final[key] + ".idx")
        atomic_write_text(stamp_path, json.dumps({**stamp, "stats": asdict(stats)}, indent=1))
    finally:
        bar.close()
        for key in keys:
            for ext in (".bin", ".idx"):
                Path(tmp[key] + ext).unlink(missing_ok=True)
    return stats


def _stamp(inputs: Sequence[str | os.PathLike], tokenizer: Tokenizer, keys: tuple[str, ...],
           skip_bad: bool) -> dict[str, Any]:  # fmt: skip
    """What the outputs are made from: each input's path, size and mtime, the tokenizer's
    identity (as megatron's dataset cache hashes it), the keys."""
    files = [[str(Path(p).resolve()), (st := os.stat(p)).st_size, st.st_mtime_ns] for p in inputs]
    return {"inputs": files, "tokenizer": tokenizer.unique_identifiers, "keys": list(keys),
            "skip_bad": skip_bad}  # fmt: skip


def _done(stamp_path: Path, stamp: dict[str, Any], final: dict[str, str]) -> bool:
    if not stamp_path.is_file():
        return False
    try:
        saved = json.loads(stamp_path.read_text())
    except json.JSONDecodeError:
        return False
    made = all(Path(p + ext).is_file() for p in final.values() for ext in (".bin", ".idx"))
    return made and {k: v for k, v in saved.items() if k != "stats"} == stamp


@contextlib.contextmanager
def _ordered_map(workers: int, tokenizer_dir: str) -> Iterator[Callable]:
    """`imap` (results in input order) over worker processes, or in this process for <= 1."""
    if workers <= 1:
        _init_worker(tokenizer_dir)
        yield map
        return
    # spawn, not fork: the parent may hold torch/megatron threads that fork would copy.
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer_dir,))
    try:
        yield pool.imap
    finally:
        pool.terminate()
        pool.join()
