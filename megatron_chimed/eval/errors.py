"""The one error bad evaluation data raises, and reading text files so that it is the one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from megatron_chimed.data import jsonio


class DataFormatError(ValueError):
    """A data or scale file does not match its format; the message names the file, the line
    (or row / item) and the field, so the user can fix the file without reading our code."""


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """`(1-based line number, line)` of a UTF-8 file, BOMs dropped; invalid UTF-8 is a
    DataFormatError naming file and line, not a decoder error at a byte offset."""
    try:
        yield from jsonio.iter_lines(path)
    except jsonio.DataError as err:
        raise DataFormatError(str(err)) from None


def read_text(path: str | Path) -> str:
    """A whole UTF-8 file without its BOM; invalid UTF-8 is a DataFormatError naming the line."""
    try:
        return jsonio.read_text(path)
    except jsonio.DataError as err:
        raise DataFormatError(str(err)) from None


def expect_object(record: object, where: str) -> dict:
    """`record` if it is a JSON object, else a DataFormatError naming `where`."""
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def read_json_objects(path: str | Path) -> Iterator[tuple[int, str, dict]]:
    """`(line number, where, record)` for every non-blank line of a JSON Lines evaluation file,
    each an object; a bad line is a DataFormatError naming file and line."""
    for line_number, line in read_lines(path):
        line = line.replace("\ufeff", "")  # a BOM may open any concatenated part
        if not line.strip():
            continue
        where = f"{path}: line {line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{where}: not valid JSON ({err.msg})") from None
        yield line_number, where, expect_object(record, where)


def jsonl_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """`(where, record)` for every non-blank line of a user's JSON Lines file, `where` being
    ``file:line`` (data/jsonio.py reads it); bad JSON or a non-object is a DataFormatError."""
    try:
        for where, record in jsonio.iter_jsonl(path):
            yield where, expect_object(record, where)
    except jsonio.DataError as err:
        raise DataFormatError(str(err)) from None


def required(record: dict, name: str, where: str, config_key: str) -> object:
    """`record[name]`, or a DataFormatError naming the line, the field and the config key that
    names it (the usual fix for your own file is pointing that key at your field)."""
    if name not in record:
        raise DataFormatError(f"{where}: field {name!r}: missing (set {config_key} to your field)")
    return record[name]
