"""A Megatron checkpoint (checkpoint/layout.py) ready to generate: model shard and tokenizer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from megatron_chimed.checkpoint import layout
from megatron_chimed.model import ModelConfig, ParallelConfig, build_model
from megatron_chimed.model.builder import Precision
from megatron_chimed.tokenizer import Tokenizer, has_tokenizer, load_tokenizer


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
    """`ROOT/tokenizer/`, next to the `iter_*` folder (or where Megatron-LM or Bridge keep it)."""
    found = layout.tokenizer_dir(ckpt_dir, layout.read_metadata(ckpt_dir))
    if not has_tokenizer(found):
        raise FileNotFoundError(
            f"{found}: no tokenizer.model or tokenizer.json; the checkpoint has no tokenizer "
            "(name one with --tokenizer)"
        )
    return found


def checkpoint_tokenizer(
    checkpoint: str | Path, override: str | Path | None = None, template: str | None = None
) -> Tokenizer:
    """The checkpoint's own tokenizer, or `override` (a tokenizer folder) in its place. It must
    fit the embedding (or generation would index past it) and, when `template` is named, be
    one that chat template can render with (`ziya` needs `<human>` / `<bot>`, `hf` a
    chat_template). Cheap: run it before loading weights."""
    from megatron_chimed.data.template import get_template

    ckpt_dir = layout.resolve(checkpoint)
    model_cfg = model_config_from_metadata(ckpt_dir)
    directory = Path(override) if override is not None else tokenizer_dir(ckpt_dir)
    tokenizer = load_tokenizer(directory)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(
            f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the model in "
            f"{ckpt_dir} has only {model_cfg.vocab_size} embedding rows"
        )
    if template is not None:
        chat = get_template(template)
        chat.encode_prompt(tokenizer, [{"role": "user", "content": "?"}])
        chat.stop_token_ids(tokenizer)
    return tokenizer


def load_for_generation(
    checkpoint: str | Path,
    tensor_parallel: int,
    precision: Precision = "bf16",
    tokenizer: str | Path | None = None,
    template: str | None = None,
) -> tuple[torch.nn.Module, Tokenizer]:
    """Build this rank's shard at `tensor_parallel` and load the checkpoint's weights into it
    (megatron parallel state must be initialised with the same TP). `tokenizer` names a
    tokenizer folder to use instead of the checkpoint's own; `template` is checked against it
    (see `checkpoint_tokenizer`)."""
    from megatron_chimed.checkpoint.weights import load_model_weights

    # Before the weights: a wrong tokenizer should fail in seconds, not after a 13B load.
    loaded_tokenizer = checkpoint_tokenizer(checkpoint, tokenizer, template)
    ckpt_dir = layout.resolve(checkpoint)
    model_cfg = model_config_from_metadata(ckpt_dir)
    parallel_cfg = ParallelConfig(tensor_model_parallel_size=tensor_parallel)
    model = build_model(model_cfg, parallel_cfg, precision)
    load_model_weights(model, ckpt_dir)
    return model.eval(), loaded_tokenizer
