"""A torch_dist checkpoint's common state (Megatron-LM's `args`), read without running its code.

Megatron-LM keeps its argparse Namespace in the checkpoint's common (non-sharded) state dict:
in `iter_N/common.pt` (megatron-core <= 0.18 always; 0.19 reads it first when present) or, since
megatron-core 0.19, inside the torch_dist folder as the object `common_state` (a `torch.save`
blob in one `.distcp` file, found through DCP's `.metadata` index). Both are pickles, and the
args hold torch dtypes and megatron enums besides plain values, so neither may be unpickled as
it is. `read` uses an unpickler that builds argparse.Namespace, SimpleNamespace, OrderedDict and
builtin containers, and puts an inert `Opaque` record (dotted name, arguments, state) in place
of every other global: nothing named in the file is imported or called. No torch either: the
config loader reads a checkpoint's shape on login nodes, before torchrun starts.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import struct
import types
import zipfile
from pathlib import Path
from typing import Any

from megatron_chimed.checkpoint import CheckpointError

COMMON_PT = "common.pt"
INDEX = ".metadata"
EMBEDDED_KEY = "common_state/"  # DCP names megatron-core 0.19's object common_state/shard_0_1
_BUILT = {
    ("argparse", "Namespace"): argparse.Namespace,
    ("types", "SimpleNamespace"): types.SimpleNamespace,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
# Data types only: never getattr, eval, __import__ or anything else that runs code.
_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool",
             "str", "bytes", "bytearray")  # fmt: skip


class Opaque:
    """What a global the reader does not build was given: `name` (module.qualname), the call's
    `args` and the pickled `state`. A torch dtype reads as the class itself (never called)."""

    name = "?"

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Opaque({self.name}{self.args!r})"


def opaque_name(value: Any) -> str | None:
    """The dotted name behind an `Opaque` class or instance (`torch.bfloat16`), else None."""
    if isinstance(value, type) and issubclass(value, Opaque) or isinstance(value, Opaque):
        return value.name
    return None


def opaque_field(value: Any, field: str) -> Any:
    """Field `field` of an `Opaque` dataclass instance (its pickled __dict__ or slots)."""
    state = value.state if isinstance(value, Opaque) else None
    if isinstance(state, tuple) and len(state) == 2:  # (dict or None, slots dict)
        state = {**(state[0] or {}), **(state[1] or {})}
    return state.get(field) if isinstance(state, dict) else None


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _BUILT:
            return _BUILT[(module, name)]
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        return type(name, (Opaque,), {"name": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        # torch.save's tensor storages: their bytes are not needed to read the args.
        return Opaque("storage", pid)


def unpickle(data: bytes, where: str) -> Any:
    """`data` unpickled with the restricted unpickler; CheckpointError naming `where`."""
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{where}: unreadable ({type(err).__name__}: {err})") from None


def torch_save_pickle(blob: bytes, where: str) -> bytes:
    """The `data.pkl` record of a `torch.save` archive. Read from its local header rather than
    with zipfile.read: the converter saves without torch's CRC32 pass, which zipfile checks."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
        info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
    except (zipfile.BadZipFile, StopIteration):
        raise CheckpointError(f"{where}: not a torch.save archive (no data.pkl)") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"{where}: data.pkl is compressed; torch.save never does that")
    header = blob[info.header_offset : info.header_offset + 30]
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{where}: no zip record at {info.header_offset}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    return blob[start : start + info.file_size]


def _embedded_blob(ckpt_dir: Path) -> tuple[bytes, str]:
    """megatron-core 0.19's `common_state` object: its bytes and a name for messages."""
    index_path = ckpt_dir / INDEX
    try:
        index = unpickle(index_path.read_bytes(), str(index_path))
    except FileNotFoundError:
        raise CheckpointError(f"{index_path}: missing; not a torch_dist checkpoint") from None
    storage = opaque_field(index, "storage_data")
    if not isinstance(storage, dict):
        raise CheckpointError(f"{index_path}: no storage_data (not a DCP index)")
    for key, info in storage.items():
        fqn = opaque_field(key, "fqn")
        if isinstance(fqn, str) and fqn.startswith(EMBEDDED_KEY):
            if opaque_field(info, "transform_descriptors"):
                raise CheckpointError(f"{index_path}: {fqn} is stored transformed (compressed)")
            path = ckpt_dir / str(opaque_field(info, "relative_path"))
            offset, length = opaque_field(info, "offset"), opaque_field(info, "length")
            with open(path, "rb") as f:
                f.seek(offset)
                blob = f.read(length)
            if len(blob) != length:
                raise CheckpointError(f"{path}: {fqn} needs {length} bytes at {offset}: truncated")
            return blob, f"{path} ({fqn})"
    raise CheckpointError(f"{ckpt_dir}: neither {COMMON_PT} nor a common_state in {INDEX}")


def read(ckpt_dir: str | Path) -> tuple[dict[str, Any], str]:
    """(the common state dict of a torch_dist folder, where it was read from). `common.pt`
    first, as megatron-core 0.19 itself does."""
    ckpt_dir = Path(ckpt_dir)
    legacy = ckpt_dir / COMMON_PT
    if legacy.is_file():
        where = str(legacy)
        state = unpickle(torch_save_pickle(legacy.read_bytes(), where), where)
    else:
        blob, where = _embedded_blob(ckpt_dir)
        state = unpickle(torch_save_pickle(blob, where), where)
        # megatron-core 0.19 saves it as a one-item list (load_common_state_dict takes [0]).
        state = state[0] if isinstance(state, list) and len(state) == 1 else state
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: the common state is a {type(state).__name__}, not a dict")
    return state, where
