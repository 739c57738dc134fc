"""Megatron dist checkpoint -> HF safetensors folder, one tensor in RAM at a time.

Works on converted and trained checkpoints alike (only the model weights are read; optimizer
state is ignored), and on Megatron-LM's and Megatron-Bridge's (checkpoint/foreign.py). Vocab
padding is trimmed back to the model's true vocabulary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_chimed.checkpoint.layout import (
    METADATA,
    copy_tokenizer,
    read_metadata,
    resolve,
)
from megatron_chimed.checkpoint.layout import tokenizer_dir as layout_tokenizer_dir
from megatron_chimed.config.schema import ModelConfig
from megatron_chimed.convert.buffers import Buffer
from megatron_chimed.convert.dcp_reader import CheckpointReader, largest_tensor
from megatron_chimed.convert.hf_folder import hf_config
from megatron_chimed.convert.mapping import ModelMapping, mapping_for
from megatron_chimed.convert.safetensors_writer import Plan, write_safetensors_shards
from megatron_chimed.convert.splice import Spliced, segments, to_hf_runs
from megatron_chimed.convert.staging import check_output, staged_output
from megatron_chimed.convert.streaming_save import single_process_group
from megatron_chimed.convert.tokenizer_files import check_tokenizer

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
MODEL_KEY_PREFIXES = ("embedding.", "decoder.", "output_layer.", "value_head.")
GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}  # Ziya's ids


def _check_stored(
    stored: dict, mapping: ModelMapping, model: ModelConfig, ckpt_dir: Path
) -> torch.dtype:
    """Every expected tensor present with its shape, no unknown model tensor; the dtype."""
    expected = {}
    for entry, layer in mapping.entries(model):
        shape = entry.megatron_shape(model)
        expected[mapping.checkpoint_key(entry, layer)] = (
            shape if layer is None else (model.num_layers, *shape)
        )
    for key in stored:
        if key.startswith(MODEL_KEY_PREFIXES) and key not in expected:
            raise KeyError(f"{ckpt_dir}: unknown tensor {key!r} for {mapping.architecture}")
    for key, shape in expected.items():
        if key not in stored:
            raise KeyError(f"{ckpt_dir}: tensor {key!r} missing from the checkpoint")
        got = tuple(stored[key].global_shape)
        # Vocab rows may be padded for another TP than 1; only the true rows are exported.
        rows_ok = key.endswith(("word_embeddings.weight", "output_layer.weight")) and (
            got[0] >= model.vocab_size and got[1:] == shape[1:]
        )
        if got != shape and not rows_ok:
            raise ValueError(
                f"{ckpt_dir}: tensor {key!r} has shape {list(got)} but {METADATA} "
                f"'model' implies {list(shape)}"
            )
    return stored[mapping.checkpoint_key(mapping.before_layers[0], None)].dtype


def _hf_tensors(
    ckpt_dir: Path, mapping: ModelMapping, model: ModelConfig, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor | Spliced]]:
    """Each HF tensor in file order: byte ranges of the checkpoint's files where its rows are
    stored whole, else built in one reused buffer; each is written out before the next is read,
    so RSS holds at most about one tensor whatever the model size."""
    reader = CheckpointReader(ckpt_dir)
    keys = [
        (mapping.checkpoint_key(e, layer), layer is not None) for e, layer in mapping.entries(model)
    ]
    size = largest_tensor(reader, keys)
    out, scratch = Buffer(size), Buffer(size)
    for entry, layer in mapping.entries(model):
        key = mapping.checkpoint_key(entry, layer)
        source = reader.row_source(key, layer) if reader.dtype(key) == dtype else None
        if source is not None:  # copied as byte ranges of the stored files (splice.py)
            for name, shape, runs in zip(
                mapping.hf_names(entry, layer), entry.hf_shapes(model), to_hf_runs(entry, model)
            ):
                yield name, Spliced(shape, dtype, segments(runs, [source]))
            continue
        tensor = reader.read(key, layer, out, scratch)
        # `scratch` is free again once the read is done: to_hf may build parts in it.
        parts = entry.to_hf(tensor, model, scratch.tensor(tensor.shape, tensor.dtype))
        yield from zip(mapping.hf_names(entry, layer), (p.to(dtype) for p in parts))


def _counted(tensors: Iterator[tuple[str, torch.Tensor]], bar: tqdm) -> Iterator:
    for name, tensor in tensors:
        bar.update(tensor.nbytes)
        yield name, tensor


def megatron_to_hf(
    ckpt: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Export the weights of a checkpoint root (its `latest`) or `iter_*` folder."""
    out = Path(out_dir)
    check_output(out, overwrite)
    ckpt_dir = resolve(ckpt)
    metadata = read_metadata(ckpt_dir)
    where = str(ckpt_dir / METADATA)
    for key in ("model", "architecture"):
        if key not in metadata:
            raise KeyError(f"{where}: key {key!r} missing")
    model = ModelConfig(**metadata["model"])
    mapping = mapping_for(metadata["architecture"], where)
    tokenizer_dir = layout_tokenizer_dir(ckpt_dir, metadata)  # ours, or Bridge's in iter_N/
    has_tokenizer = check_tokenizer(tokenizer_dir, model, where)
    from megatron.core import dist_checkpointing

    with single_process_group():
        stored = dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
        dtype = dtype or _check_stored(stored, mapping, model, ckpt_dir)
        plan: Plan = [
            (name, shape, dtype)
            for entry, layer in mapping.entries(model)
            for name, shape in zip(mapping.hf_names(entry, layer), entry.hf_shapes(model))
        ]
        total = sum(int(torch.Size(shape).numel()) * dtype.itemsize for _, shape, _ in plan)
        with (
            tqdm(
                total=total, unit="B", unit_scale=True, desc="megatron -> HF", disable=not progress
            ) as bar,
            staged_output(out, overwrite) as tmp,
        ):
            tensors = _hf_tensors(ckpt_dir, mapping, model, dtype)
            write_safetensors_shards(tmp, plan, _counted(tensors, bar), max_shard_bytes)
            config = metadata.get("hf_config") or hf_config(
                model, "", mapping.architecture, **mapping.hf_config_extra
            )
            config["torch_dtype"] = str(dtype).removeprefix("torch.")
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            generation = metadata.get("hf_generation_config") or GENERATION_CONFIG
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
            if has_tokenizer:
                copy_tokenizer(tokenizer_dir, tmp)
    return out
