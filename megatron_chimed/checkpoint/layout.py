"""Where a checkpoint's files live, and the `latest` pointer.

    ROOT/
      latest              text "iter_0000100": written (temp + rename) only after that
                          checkpoint is complete, so a job killed mid-save resumes from the
                          previous good one
      iter_0000100/       megatron dist_checkpointing (torch_dist), loadable at any TP
        chimed.json       our metadata: model config, spec, iteration, consumed samples, kind
        manifest.json     size and CRC32 of every file (training checkpoints; manifest.py)
      tokenizer/          the tokenizer files, copied through so a checkpoint is self-contained
      latest_checkpointed_iteration.txt   "100": Megatron-LM's and Bridge's `latest`, moved with it
    (iter_N/common.pt and iter_N/run_config.yaml: what those tools read, checkpoint/interop.py)

The converter writes iteration 0 (kind "converted", weights only); training stages write
iteration N (kind "train", with optimizer, scheduler, RNG and data position). `resolve` and
`read_metadata` also take a Megatron-LM or Megatron-Bridge checkpoint, which has no chimed.json:
its shape comes from its own metadata (checkpoint/foreign.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.data.jsonio import read_json

LATEST = "latest"
TRACKER = "latest_checkpointed_iteration.txt"  # Megatron-LM's `latest`
METADATA = "chimed.json"
TOKENIZER = "tokenizer"
# Sentencepiece (Ziya) and HF fast (`tokenizer.json`, what transformers 5 saves) tokenizers,
# with the files naming their special tokens and chat template: see megatron_chimed/tokenizer.py.
TOKENIZER_FILES = (
    "tokenizer.model",
    "added_tokens.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def iteration_dir(root: str | os.PathLike, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def write_latest(root: str | os.PathLike, iteration: int) -> None:
    atomic_write_text(Path(root) / LATEST, iteration_dir(root, iteration).name + "\n")
    # Megatron-LM's tracker (Bridge reads it too): the bare number, as Megatron-LM writes it.
    atomic_write_text(Path(root) / TRACKER, str(iteration))


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
    """A checkpoint root (follow `latest`) or an `iter_*` folder itself; one of Megatron-LM or
    Megatron-Bridge (follow their tracker, else their highest `iter_*`) when it has no
    chimed.json and no `latest`."""
    from megatron_chimed.checkpoint import foreign

    path = Path(path)
    if (path / METADATA).is_file():
        return path
    found = read_latest(path) or foreign.find_iteration(path)
    if found is None:
        raise FileNotFoundError(
            f"{path}: no {METADATA} and no {LATEST} (nor Megatron-LM's {TRACKER} or "
            f"Megatron-Bridge's {foreign.RUN_CONFIG}): not a checkpoint"
        )
    return found


def metadata_text(metadata: dict[str, Any]) -> str:
    """chimed.json's text (checkpoint/manifest.py checksums it before it is written)."""
    return json.dumps(metadata, indent=2, sort_keys=True)


def write_metadata(ckpt_dir: str | os.PathLike, metadata: dict[str, Any]) -> None:
    atomic_write_text(Path(ckpt_dir) / METADATA, metadata_text(metadata))


def read_metadata(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """chimed.json; for a Megatron-LM or Megatron-Bridge folder, the same fields read from
    their metadata (kind "megatron-lm" / "megatron-bridge")."""
    from megatron_chimed.checkpoint import foreign

    path = Path(ckpt_dir) / METADATA
    try:
        return read_json(path)
    except FileNotFoundError:
        if foreign.is_iteration_dir(path.parent):
            return foreign.read_metadata(path.parent)
        raise FileNotFoundError(f"{path}: missing; not a megatron-chimed checkpoint") from None


def tokenizer_dir(ckpt_dir: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """The tokenizer folder of an `iter_*` folder: ours (ROOT/tokenizer/), else where Bridge
    or Megatron-LM keep theirs; ours when none has one (for the caller's message)."""
    from megatron_chimed.checkpoint import foreign
    from megatron_chimed.tokenizer import has_tokenizer

    ckpt_dir = Path(ckpt_dir)
    ours = ckpt_dir.parent / TOKENIZER
    if has_tokenizer(ours) or (ckpt_dir / METADATA).is_file():
        return ours
    return next((d for d in foreign.tokenizer_dirs(ckpt_dir, metadata) if has_tokenizer(d)), ours)


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = True) -> None:
    """Copy the tokenizer files found in `src` into `dst` (created). `overwrite=False` keeps
    files `dst` already has: a training run keeps the tokenizer its checkpoints started with."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and (overwrite or not (dst / name).is_file()):
            shutil.copy2(src / name, dst / name)
