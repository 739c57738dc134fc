"""Which checkpoint a start reads: the newest complete one whose files match its manifest.

A resume reads `latest`; a `checkpoint.load` names a checkpoint root (its `latest`) or one
`iter_*` folder. Before anything is loaded, the folder is checked against its manifest.json
(checkpoint/manifest.py, in parallel over the ranks), or, for a checkpoint written before
manifests, its shard files against the index DCP keeps in `.metadata` (existence and length).
A mismatch under `checkpoint.on_corrupt`:

- `fallback` (default): one warning naming the bad file, and the previous complete checkpoint
  of the same root is tried instead; an error when none is left;
- `refuse`: an error naming the bad file.

A folder named explicitly by `checkpoint.load` has no previous one: a mismatch is an error;
so has a Megatron-LM or Megatron-Bridge checkpoint (the folder their tracker names).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch.distributed as dist

from megatron_chimed.checkpoint import CheckpointError, layout, manifest, safe_load

log = logging.getLogger("megatron_chimed.train")


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def problems(ckpt_dir: Path) -> list[str]:
    """What is wrong with the files of `ckpt_dir`, each naming a file (collective)."""
    found = manifest.verify(ckpt_dir)
    if found is not None:
        return found
    if _rank0():
        log.info("%s: no %s (written before checksums, or by the converter): its files are "
                 "checked against its index only", ckpt_dir, manifest.MANIFEST)  # fmt: skip
    try:
        safe_load.check_files(ckpt_dir, safe_load.read_index(ckpt_dir))
    except CheckpointError as err:
        return [str(err)]
    return []


def _summary(found: list[str]) -> str:
    return found[0] + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")


def resume_point(root: str | os.PathLike, on_corrupt: str) -> Path | None:
    """The checkpoint under `root` to resume from: `latest` if sound, else (fallback) the
    newest earlier complete one that is; None when `root` has no checkpoint yet."""
    root = Path(root)
    latest = layout.read_latest(root)
    if latest is None:
        return None
    complete = sorted(p for p in root.glob("iter_*") if (p / layout.METADATA).is_file())
    candidates = [latest] + [p for p in reversed(complete) if p.name < latest.name]
    for i, ckpt in enumerate(candidates):
        found = problems(ckpt)
        if not found:
            return ckpt
        if on_corrupt == "refuse":
            raise CheckpointError(f"{_summary(found)} (checkpoint.on_corrupt=refuse)")
        if i + 1 == len(candidates):
            raise CheckpointError(f"{_summary(found)}; no earlier complete checkpoint in {root}")
        if _rank0():
            log.warning("%s: falling back to %s (checkpoint.on_corrupt=fallback)",
                        _summary(found), candidates[i + 1].name)  # fmt: skip
    return None  # unreachable: the loop returns or raises


def load_point(path: str | os.PathLike, on_corrupt: str) -> Path:
    """The `iter_*` folder a `checkpoint.load` of `path` reads, checked like a resume's."""
    path = Path(path)
    other_tool = not (path / layout.METADATA).is_file() and not (path / layout.LATEST).is_file()
    if other_tool:  # Megatron-LM's or Bridge's layout: their one folder, or FileNotFoundError
        path = layout.resolve(path)
    if other_tool or (path / layout.METADATA).is_file():
        found = problems(path)
        if found:
            raise CheckpointError(
                f"{_summary(found)}: checkpoint.load names this folder; name a sound iter_* "
                "folder or the checkpoints root (its latest, or an earlier one on fallback)"
            )
        return path
    ckpt = resume_point(path, on_corrupt)
    if ckpt is None:
        raise FileNotFoundError(f"{path}: no {layout.METADATA} and no {layout.LATEST}: not a "
                                "checkpoint (checkpoint.load)")  # fmt: skip
    return ckpt
