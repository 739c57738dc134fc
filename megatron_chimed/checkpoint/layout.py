"""Where a checkpoint's files live, and the `latest` pointer.

    ROOT/
      latest              text "iter_0000100": written (temp + rename) only after that
                          checkpoint is complete, so a job killed mid-save resumes from the
                          previous good one
      iter_0000100/       megatron dist_checkpointing (torch_dist), loadable at any TP
        chimed.json       our metadata: model config, spec, iteration, consumed samples, kind
      tokenizer/          the tokenizer files, copied through so a checkpoint is self-contained

The converter writes iteration 0 (kind "converted", weights only); training stages write
iteration N (kind "train", with optimizer, scheduler, RNG and data position).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.data.jsonio import read_json

LATEST = "latest"
METADATA = "chimed.json"
TOKENIZER = "tokenizer"
TOKENIZER_FILES = (
    "tokenizer.model",
    "added_tokens.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
)


def iteration_dir(root: str | os.PathLike, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def write_latest(root: str | os.PathLike, iteration: int) -> None:
    atomic_write_text(Path(root) / LATEST, iteration_dir(root, iteration).name + "\n")


def read_latest(root: str | os.PathLike) -> Path | None:
    """The complete checkpoint `latest` names, or None when there is none yet."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    target = Path(root) / pointer.read_text().strip()
    if not (target / METADATA).is_file():
        raise FileNotFoundError(f"{pointer} names {target.name}, which has no {METADATA}")
    return target


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint root (follow `latest`) or an `iter_*` folder itself."""
    path = Path(path)
    if (path / METADATA).is_file():
        return path
    found = read_latest(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no {METADATA} and no {LATEST}: not a checkpoint")
    return found


def write_metadata(ckpt_dir: str | os.PathLike, metadata: dict[str, Any]) -> None:
    atomic_write_text(Path(ckpt_dir) / METADATA, json.dumps(metadata, indent=2, sort_keys=True))


def read_metadata(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(ckpt_dir) / METADATA
    try:
        return read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; not a megatron-chimed checkpoint") from None
