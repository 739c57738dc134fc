"""Reading data files: JSON Lines, streamed JSON arrays, and errors that say where.

Real data sets are large (MedDialog's processed split is one multi-GB JSON array), so nothing
here loads a whole file: JSON Lines are read line by line and arrays element by element with
`json.JSONDecoder.raw_decode` on a sliding buffer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BOM = "\ufeff"
AFTER_ELEMENT = (",", "]", " ", "\t", "\r", "\n")


class DataError(ValueError):
    """Bad input data; the message names the file, the line or array index, and the field."""

    def __init__(self, where: str, field: str | None, problem: str) -> None:
        self.where, self.field = where, field
        at = f"field {field!r}: " if field else ""
        super().__init__(f"{where}: {at}{problem}")


# Invalid UTF-8 bytes as the `surrogateescape` error handler decodes them. Valid UTF-8 never
# decodes to these (Python's decoder refuses encoded surrogates too).
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_CONVERT = "convert the file to UTF-8, e.g. `iconv -f GBK -t UTF-8`"


def not_utf8(
    where: str, text: str, pos: int = 0, end: int | None = None, unit: str = "column"
) -> DataError | None:
    """A DataError naming `where` and the first invalid UTF-8 byte of `text[pos:end]` (decoded
    with `surrogateescape`; counted from `pos` in `unit`s), or None when that part is clean."""
    bad = _UNDECODABLE.search(text, pos, len(text) if end is None else end)
    if bad is None:
        return None
    byte = ord(bad.group()) - 0xDC00
    at = f"{unit} {bad.start() - pos + 1}"
    return DataError(where, None, f"not valid UTF-8 (byte 0x{byte:02x} at {at}); {_CONVERT}")


def read_text(path: str | Path) -> str:
    """A whole UTF-8 file without its BOM; invalid UTF-8 is a DataError naming the line (the
    decoder's own error gives a byte offset, which no editor shows)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="surrogateescape")
        for number, line in enumerate(text.split("\n"), 1):
            if (err := not_utf8(f"{path}:{number}", line)) is not None:
                raise err from None
        raise


def read_json(path: str | Path) -> Any:
    """One whole JSON file (a config, an index, metadata); errors name the file and line."""
    try:
        return json.loads(read_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """`(1-based line number, line)` without BOMs; `utf-8-sig` only strips the first one, and
    files made by concatenation carry one per part. A line with invalid UTF-8 is a DataError
    naming file and line (the decoder's own error gives only an offset into its buffer)."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for number, line in enumerate(f, 1):
            line = line.lstrip(BOM).rstrip("\r\n")
            if (err := not_utf8(f"{path}:{number}", line)) is not None:
                raise err
            yield number, line


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """`(where, record)` for every non-blank line of a JSON Lines file (whatever its name)."""
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            problem = f"not valid JSON ({err.msg} at column {err.colno})"
            raise DataError(where, None, problem) from None


def iter_json_array(path: str | Path, chunk_chars: int = 1 << 20) -> Iterator[tuple[str, Any]]:
    """`(where, element)` for each element of a file holding one JSON array, streamed."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        buffer, pos, eof = "", 0, False

        def next_char() -> str:
            """The next non-blank character, reading more of the file as needed ('' at EOF)."""
            nonlocal buffer, pos, eof
            while True:
                while pos < len(buffer) and buffer[pos] in " \t\r\n" + BOM:
                    pos += 1
                if pos < len(buffer) or eof:
                    return buffer[pos : pos + 1]
                buffer, pos = f.read(chunk_chars), 0
                eof = not buffer

        if next_char() != "[":
            raise DataError(f"{path}", None, "expected a JSON array ('[' first)")
        pos += 1
        index = 0
        if next_char() == "]":
            return
        while True:
            where = f"{path}[{index}]"
            next_char()
            while True:
                try:
                    element, end = decoder.raw_decode(buffer, pos)
                    # A number cut by the buffer end ("12" of "12.5") also decodes: accept
                    # an element only when what follows it is known.
                    if eof or buffer[end : end + 1] in AFTER_ELEMENT:
                        break
                except json.JSONDecodeError as err:
                    if eof:
                        raise DataError(where, None, f"not valid JSON ({err.msg})") from None
                # The element may be cut by the buffer end: read on and decode it again.
                more = f.read(chunk_chars)
                eof = not more
                buffer, pos = buffer[pos:] + more, 0
            if (err := not_utf8(where, buffer, pos, end, "character")) is not None:
                raise err
            pos = end
            yield where, element
            index += 1
            sep = next_char()
            if sep == "]":
                return
            if sep != ",":
                raise DataError(where, None, f"expected ',' or ']' after the element, got {sep!r}")
            pos += 1


def field(record: Any, name: str, where: str, kind: type = str) -> Any:
    """`record[name]`, checked to be of `kind`; a DataError naming the field otherwise."""
    if not isinstance(record, dict):
        raise DataError(where, None, f"expected a JSON object, got {type(record).__name__}")
    if name not in record:
        raise DataError(where, name, "missing")
    value = record[name]
    if not isinstance(value, kind):
        raise DataError(where, name, f"expected {kind.__name__}, got {type(value).__name__}")
    return value
