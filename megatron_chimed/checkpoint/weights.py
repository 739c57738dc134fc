"""Save and load a model's weights in the shared checkpoint layout, at any TP.

Weights live under the top-level state-dict key "model" of a megatron dist checkpoint, saved
by `model.sharded_state_dict()`, so megatron reshards them to whatever TP the loading model
runs at. Checkpoint keys do not depend on the layer spec: megatron-core's local spec saves its
norms under the Transformer Engine names (`sharded_state_dict_keys_map`), so a checkpoint made
on a CPU machine (local spec) loads into a TE model on GPUs and back. `_extra_state` entries
(TE's FP8 scaling state, empty on the local spec) are not weights and are not loaded here.
Non-tensor items are read with the weights-only unpickler (checkpoint/safe_load.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_chimed.checkpoint import safe_load
from megatron_chimed.checkpoint.layout import (
    iteration_dir,
    read_metadata,
    resolve,
    write_latest,
    write_metadata,
)
from megatron_chimed.model.builder import unwrap

EXTRA_STATE = "_extra_state"


def layer_spec_of(model: torch.nn.Module) -> str:
    """Which layer spec built `model`: TE modules hold their norm as `layer_norm_weight`."""
    names = (name for name, _ in unwrap(model).named_parameters())
    return "transformer_engine" if any("layer_norm_weight" in n for n in names) else "local"


def save_model_weights(
    model: torch.nn.Module, root: str | os.PathLike, iteration: int, metadata: dict[str, Any]
) -> Path:
    """Write ROOT/iter_N (collective: every rank calls it), its chimed.json, then `latest`."""
    from megatron.core import dist_checkpointing

    ckpt = iteration_dir(root, iteration)
    if dist.get_rank() == 0:
        ckpt.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save({"model": unwrap(model).sharded_state_dict()}, str(ckpt))
    if dist.get_rank() == 0:
        write_metadata(ckpt, {**metadata, "iteration": iteration, "spec": layer_spec_of(model)})
        write_latest(root, iteration)
    dist.barrier()
    return ckpt


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load the weights of a checkpoint root (its `latest`) or `iter_*` folder into a built
    model at this rank's TP shard, whatever TP they were saved at. Returns chimed.json."""
    from megatron.core import dist_checkpointing

    ckpt = resolve(path)
    metadata = read_metadata(ckpt)
    gpt = unwrap(model)
    request = {
        name: sharded
        for name, sharded in gpt.sharded_state_dict().items()
        if not name.endswith(EXTRA_STATE)
    }
    safe_load.read_index(ckpt)  # refused before megatron unpickles it
    with safe_load.no_pickled_code(ckpt):
        loaded = dist_checkpointing.load({"model": request}, str(ckpt))["model"]
    missing, unexpected = gpt.load_state_dict(loaded, strict=False)
    not_loaded = [name for name in missing if not name.endswith(EXTRA_STATE)]
    if not_loaded or unexpected:
        raise KeyError(f"{ckpt}: weights not loaded {not_loaded}, unexpected {unexpected}")
    return metadata
