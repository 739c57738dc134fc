"""Records from a data file of any supported type, and columns looked up through a mapping.

Every reader of user data (SFT formats, reward data, RS prompts, pre-training text) goes
through `iter_records`, so each file type is parsed, and each bad row reported, in one place
(tools/preprocess_data.py takes the type from `read_as` and parses JSON Lines in its worker
processes, line by line, so that a bad line can be skipped):

* `jsonl` (also `.ndjson`): one JSON object a line;
* `json`: one JSON array, streamed element by element; a `.json` file whose first character is
  not `[` is read as JSON Lines, because the paper's data sets (CMD, MC) name JSON Lines `.json`;
* `csv` / `tsv`: a header row, then one record a row (UTF-8, a BOM tolerated);
* `parquet`: needs pyarrow (`pip install pyarrow`, or the `data` extra), read batch by batch.

Each record comes with `where`: `file:line` (JSON Lines, CSV) or `file[index]` (JSON array,
Parquet), which every error about it starts with.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from megatron_chimed.data.jsonio import BOM, DataError, iter_json_array, iter_jsonl, not_utf8

FILE_TYPES = ("jsonl", "json", "csv", "tsv", "parquet")
_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
              ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}  # fmt: skip
PARQUET_BATCH_ROWS = 4096  # a few MB of text per batch: bounded memory on multi-GB files


def file_type_of(path: str | Path, file_type: str | None = None) -> str:
    """The explicit `file_type`, else the one its suffix names; an unknown one is an error."""
    if file_type is not None:
        if file_type not in FILE_TYPES:
            raise ValueError(f"file_type={file_type!r}: expected one of {FILE_TYPES}")
        return file_type
    suffix = Path(path).suffix.lower()
    if suffix not in _BY_SUFFIX:
        raise ValueError(
            f"{path}: cannot tell the file type from {suffix or 'no suffix'!r}; "
            f"set file_type to one of {FILE_TYPES}"
        )
    return _BY_SUFFIX[suffix]


def _first_char(path: str | Path) -> str:
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        while chunk := f.read(4096):
            if stripped := chunk.lstrip(" \t\r\n" + BOM):
                return stripped[0]
    return ""


def read_as(path: str | Path, file_type: str | None = None) -> str:
    """The type `iter_records` reads `path` as: `file_type_of`, except that a `.json` (or
    explicit 'json') file whose first character is not `[` is JSON Lines (CMD, MC)."""
    kind = file_type_of(path, file_type)
    if kind == "json" and _first_char(path) != "[":
        kind = "jsonl"
    return kind


def iter_records(path: str | Path, file_type: str | None = None) -> Iterator[tuple[str, Any]]:
    """`(where, record)` for every record of `path`; CSV and Parquet records are dicts of
    column -> value (CSV values are strings, an empty cell is '')."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    kind = read_as(path, file_type)
    if kind == "jsonl":
        yield from iter_jsonl(path)
    elif kind == "json":
        yield from iter_json_array(path)
    elif kind in ("csv", "tsv"):
        yield from _iter_csv(path, "\t" if kind == "tsv" else ",")
    else:
        yield from _iter_parquet(path)


def _iter_csv(path: str | Path, delimiter: str) -> Iterator[tuple[str, dict[str, str]]]:
    # Medical answers hold long quoted cells; the default 128 KiB field limit is too small.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        if (err := not_utf8(f"{path}:1", delimiter.join(header))) is not None:
            raise err
        start = reader.line_num + 1  # a quoted cell may span lines: name the row's first line
        for row in reader:
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if None in row:  # DictReader's key for cells beyond the header
                raise DataError(where, None, f"{len(header) + len(row[None])} cells, but the "
                                f"header has {len(header)}")  # fmt: skip
            for name, value in row.items():
                if isinstance(value, str) and (err := not_utf8(where, value)) is not None:
                    raise DataError(where, name, str(err).split(": ", 1)[1])
            yield where, row


def _iter_parquet(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            f"{path}: reading Parquet needs pyarrow: `pip install pyarrow` "
            "(or `pip install -e .[data]`)"
        ) from None
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            yield f"{path}[{index}]", row
            index += 1


def column(
    record: Any,
    name: str,
    where: str,
    key: str,
    kind: type | tuple[type, ...] = str,
    required: bool = True,
) -> Any:
    """`record[name]`, the column that the mapping key `key` (e.g. `columns.prompt`) names.

    A missing column is a DataError naming the row, the column, the mapping key to set and the
    columns the record has; a value of the wrong type names the row and the column. A missing
    optional column (`required=False`) or a null one gives None.
    """
    if not isinstance(record, Mapping):
        raise DataError(where, None, f"expected an object/row, got {type(record).__name__}")
    if name not in record:
        if not required:
            return None
        problem = f"missing (set {key} to one of the record's columns: {sorted(record)})"
        raise DataError(where, name, problem)
    value = record[name]
    if value is None and not required:
        return None
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(where, name, f"expected {expected}, got {type(value).__name__} ({key})")
    return value
