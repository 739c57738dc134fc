"""Where the raw bytes of the storages in a `torch.save` archive are.

torch.save writes a zip whose storages are uncompressed records `<archive>/data/<key>`; a
record's bytes start after its 30-byte local header, its name and its extra field (the padding
torch uses to align them). Reading those ranges directly skips unpickling, and lets the
converters copy them as byte ranges (splice.py).
"""

from __future__ import annotations

import struct
import zipfile
from typing import BinaryIO

ZIP_LOCAL_HEADER = 30  # bytes before a record's name; name and extra lengths at 26..30


def storage_records(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The storage records (not `.data/serialization_id` and the like)."""
    return [i for i in archive.infolist() if "/data/" in i.filename and ".data/" not in i.filename]


def record_data_start(f: BinaryIO, archive_start: int, info: zipfile.ZipInfo) -> int:
    """File offset of the first byte of `info`'s data, for an archive at `archive_start`."""
    f.seek(archive_start + info.header_offset)
    header = f.read(ZIP_LOCAL_HEADER)
    if len(header) != ZIP_LOCAL_HEADER or header[:4] != b"PK\x03\x04":
        raise ValueError(f"{getattr(f, 'name', f)}: no zip record at {info.header_offset}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return archive_start + info.header_offset + ZIP_LOCAL_HEADER + name_len + extra_len
