"""A run that starts from a checkpoint builds the checkpoint's model, not the `model` group's.

`checkpoint.load` (a converted HF model, a previous stage's output) and a resume from run_dir's
own checkpoints load weights of a fixed shape, recorded in the checkpoint's chimed.json under
`model` (as generation and evaluation read it). The composed `model` section would otherwise be
the default group's (`model=tiny`), and a 13B checkpoint would fail deep in dist-checkpointing
with a "Global shape mismatch" after the model was built. So `config/load.py` takes the model
section from the checkpoint; what the user chose (a `model=` group, one an experiment selects,
`model.*` overrides) must agree with it on the shape fields, and keeps the other fields
(implementation, attention backend, ...).

Reads files only: no torch (the config is loaded on login nodes and before torchrun starts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from megatron_chimed.checkpoint import layout

# The fields that decide the weights' shapes (the padded vocabulary depends on
# make_vocab_size_divisible_by): a model built with another value cannot load the checkpoint.
SHAPE_FIELDS = (
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "num_query_groups",
    "ffn_hidden_size",
    "vocab_size",
    "untie_embeddings_and_output_weights",
    "make_vocab_size_divisible_by",
)


def model_source(run_dir: str, load: str | None) -> tuple[str, Path] | None:
    """(the config key it comes from, the checkpoint folder) the run's weights are read from:
    run_dir's own latest checkpoint (a resume, which wins as in the training loop), else
    `checkpoint.load`; None when there is none yet (or not here: the stage says so later)."""
    latest = None
    try:
        latest = layout.read_latest(Path(run_dir) / "checkpoints")
    except FileNotFoundError:
        pass  # `latest` names an incomplete save: the loop reports it
    if latest is not None:
        return "run_dir", latest
    if load:
        try:
            return "checkpoint.load", layout.resolve(load)
        except FileNotFoundError:
            return None
    return None


def user_model_keys(
    overrides: Iterable[str], composed: Mapping[str, Any], default: Mapping[str, Any]
) -> set[str]:
    """Model fields the user set: every field of a `model=` group given on the command line,
    each `model.<key>=` override, and whatever differs from the default group's value (a group
    an experiment selects, a user folder's)."""
    keys = {key for key in composed if composed[key] != default.get(key)}
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        if key == "model":
            keys |= set(composed)
        elif key.startswith("model."):
            keys.add(key.split(".")[1])
    return keys


def checkpoint_model(
    composed: Mapping[str, Any],
    user_keys: set[str],
    saved: Mapping[str, Any],
    where: str,
) -> dict[str, Any]:
    """The model section to build: the checkpoint's `saved` fields, with the user's own values
    for the fields they set. ValueError naming each shape field the user set otherwise (field,
    checkpoint value, config value), before anything is built."""
    unknown = sorted(set(saved) - set(composed))
    if unknown:
        raise ValueError(f"{where}: field 'model' has unknown keys {unknown}")
    conflicts = [
        f"model.{key}: checkpoint {saved[key]!r}, config {composed[key]!r}"
        for key in SHAPE_FIELDS
        if key in user_keys and key in saved and composed[key] != saved[key]
    ]
    if conflicts:
        raise ValueError(
            f"{where} holds another model shape than the config's model "
            f"(name={composed.get('name')!r}): {'; '.join(conflicts)}. Leave model= and the "
            "model.* shape keys out to build the checkpoint's shape"
        )
    return {**composed, **{k: v for k, v in saved.items() if k not in user_keys}}


def saved_model(ckpt_dir: Path) -> tuple[dict[str, Any], str]:
    """(the `model` fields of the checkpoint's chimed.json, that file's path for messages)."""
    where = str(ckpt_dir / layout.METADATA)
    fields = layout.read_metadata(ckpt_dir).get("model")
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: field 'model' (the model config) is missing or not an object")
    return fields, where
