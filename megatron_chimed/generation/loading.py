"""A Megatron checkpoint (checkpoint/layout.py) ready to generate: model shard and tokenizer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from megatron_chimed.checkpoint import layout
from megatron_chimed.model import ModelConfig, ParallelConfig, build_model
from megatron_chimed.model.builder import Precision
from megatron_chimed.tokenizer import ZiyaTokenizer


def model_config_from_metadata(ckpt_dir: Path) -> ModelConfig:
    """The architecture recorded in `chimed.json` under `model`."""
    metadata = layout.read_metadata(ckpt_dir)
    fields = metadata.get("model")
    where = ckpt_dir / layout.METADATA
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: field 'model' (the model config) is missing or not an object")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{where}: field 'model' has unknown keys {unknown}")
    return ModelConfig(**fields)


def tokenizer_dir(ckpt_dir: Path) -> Path:
    """`ROOT/tokenizer/`, next to the `iter_*` folder."""
    found = ckpt_dir.parent / layout.TOKENIZER
    if not (found / "tokenizer.model").is_file():
        raise FileNotFoundError(f"{found}: no tokenizer.model; the checkpoint has no tokenizer")
    return found


def load_for_generation(
    checkpoint: str | Path, tensor_parallel: int, precision: Precision = "bf16"
) -> tuple[torch.nn.Module, ZiyaTokenizer]:
    """Build this rank's shard at `tensor_parallel` and load the checkpoint's weights into it
    (megatron parallel state must be initialised with the same TP)."""
    from megatron_chimed.checkpoint.weights import load_model_weights

    ckpt_dir = layout.resolve(checkpoint)
    model_cfg = model_config_from_metadata(ckpt_dir)
    parallel_cfg = ParallelConfig(tensor_model_parallel_size=tensor_parallel)
    model = build_model(model_cfg, parallel_cfg, precision)
    load_model_weights(model, ckpt_dir)
    return model.eval(), ZiyaTokenizer(tokenizer_dir(ckpt_dir))
