"""Reading a torch_dist checkpoint without running code stored in it.

A torch_dist folder holds pickles next to the tensors: DCP's index (`.metadata`) is read with
plain `pickle.load`, and every non-tensor item (megatron's ShardedObjects: the optimizer's param
groups and bucket sizes, the common state, Transformer Engine's extra state, and the RNG state of
checkpoints written before it was stored as tensors) with `torch.load(weights_only=False)` by
DCP's default load planner. A crafted object in any of them would run on load. Here:

- `read_index` unpickles `.metadata` with an unpickler that builds only DCP's metadata classes
  and torch sizes and dtypes, before megatron reads the same bytes;
- `check_files` compares the shard files with the index (a truncated shard names its file,
  where megatron would die in an EOFError on one rank);
- `no_pickled_code` loads non-tensor items with torch's weights-only unpickler (containers,
  numbers, strings, tensors) for the duration of a load, and the common state from the
  torch_dist files, not from the common.pt our checkpoints keep for Megatron-LM (its args);
- `check_extra_state` refuses TE extra state that TE itself would unpickle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import pickle
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from megatron_chimed.checkpoint import CheckpointError

INDEX = ".metadata"
EXTRA_STATE = "_extra_state"
_DCP = "torch.distributed.checkpoint"
_OTHERS = {
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    # StorageMeta.checkpoint_id of a save given a Path (the converter's)
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
}


class _Refused(pickle.UnpicklingError):
    pass


class _IndexUnpickler(pickle.Unpickler):
    """Builds what DCP pickles into `.metadata` and nothing else: its own dataclasses and enums,
    torch.Size, dtypes and layouts, paths. A module is checked before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(_DCP + "."):
            found = super().find_class(module, name)
            # Plain records, whose constructors only store fields (no writers, no readers).
            if isinstance(found, type) and (
                dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)
            ):
                return found
        elif module == "torch":
            found = getattr(torch, name, None)
            if found is torch.Size or isinstance(
                found, torch.dtype | torch.layout | torch.memory_format
            ):
                return found
        elif (module, name) in _OTHERS:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name} is not checkpoint metadata")


def read_index(ckpt_dir: str | Path) -> Any:
    """DCP's index of `ckpt_dir` (its `.metadata`), unpickled without running stored code."""
    path = Path(ckpt_dir) / INDEX
    try:
        with open(path, "rb") as f:
            return _IndexUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; not a torch_dist checkpoint") from None
    except _Refused as err:
        raise CheckpointError(f"{path}: refused to unpickle: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from None


def check_files(ckpt_dir: str | Path, index: Any) -> None:
    """Every shard file the index names exists and is long enough for the items it holds."""
    needed: dict[str, int] = {}
    for info in index.storage_data.values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        path = Path(ckpt_dir) / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (named by {INDEX})")
        size = path.stat().st_size
        if size < end:
            raise CheckpointError(f"{path}: {size} bytes, its {INDEX} needs {end}: truncated")


def _has_own_common_state(checkpoint_dir: str | Path) -> bool:
    """Whether the torch_dist files hold the common state (megatron-core >= 0.19 writes it)."""
    try:
        index = read_index(checkpoint_dir)
    except CheckpointError:
        return False
    return any(key.fqn.startswith("common_state/") for key in index.storage_data)


def _reason(err: BaseException) -> str:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if found:
        return f"it would call {found.group(1)}, which checkpoint data never needs"
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


@contextlib.contextmanager
def no_pickled_code(ckpt_dir: str | Path, allow: Sequence[Any] = ()) -> Iterator[None]:
    """Within: DCP loads non-tensor items with torch's weights-only unpickler (plus `allow`,
    globals a known old item needs). A refused item fails the load with one line naming it."""
    from torch.distributed.checkpoint import default_planner

    refused: list[str] = []
    original = default_planner.DefaultLoadPlanner.load_bytes

    def load_bytes(self: Any, read_item: Any, value: Any) -> None:
        fqn = read_item.dest_index.fqn
        try:
            with torch.serialization.safe_globals(list(allow)):
                obj = torch.load(value, weights_only=True)
        except Exception as err:
            refused.append(f"{fqn}: {_reason(err)}")
            raise
        if self.flatten_state_dict:
            default_planner.set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj

    from megatron.core.dist_checkpointing import serialization

    legacy = serialization._legacy_common_state_exists

    def legacy_when_alone(checkpoint_dir: str) -> bool:
        # megatron-core reads a common.pt first, with torch.load's overridable default; ours
        # holds Megatron-LM's args (checkpoint/interop.py). Read the files' own common state,
        # through load_bytes; common.pt only where it is all there is (megatron-core <= 0.18).
        return legacy(checkpoint_dir) and not _has_own_common_state(checkpoint_dir)

    default_planner.DefaultLoadPlanner.load_bytes = load_bytes
    serialization._legacy_common_state_exists = legacy_when_alone
    try:
        yield
    except BaseException:
        # DCP wraps the planner's error in a CheckpointException (a BaseException) that prints
        # a traceback per rank.
        if refused:
            raise CheckpointError(f"{ckpt_dir}: refused to unpickle {refused[0]}") from None
        raise
    finally:
        default_planner.DefaultLoadPlanner.load_bytes = original
        serialization._legacy_common_state_exists = legacy


# TE without FP8 saves an empty tensor, or (some 2.x releases) the pickle of None.
_NO_FP8 = {b""} | {pickle.dumps(None, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)}


def check_extra_state(ckpt_dir: str | Path, model_state: dict[str, Any]) -> None:
    """TE's set_extra_state unpickles an extra-state tensor (its FP8 scaling state). Runs here
    never use FP8: a checkpoint of theirs holds no state there, which is all this lets through."""
    for key, value in model_state.items():
        if not key.endswith(EXTRA_STATE) or value is None:
            continue
        raw = value.cpu().numpy().tobytes() if isinstance(value, torch.Tensor) else None
        if raw not in _NO_FP8:
            raise CheckpointError(
                f"{ckpt_dir}: {key} holds FP8 state (a pickle Transformer Engine would load);"
                " this framework trains without FP8 and refuses it"
            )
