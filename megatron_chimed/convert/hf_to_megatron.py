"""HF folder -> megatron dist checkpoint (torch_dist, TP-agnostic), one tensor in RAM at a time.

The result is the layout every training stage uses (`megatron_chimed/checkpoint/layout.py`):
OUT/iter_0000000/ (weights under the "model" state-dict key, as a TP=1 GPTModel names and
shapes them, which megatron reshards to any TP at load), OUT/tokenizer/, OUT/latest, and what
Megatron-LM and Megatron-Bridge read (checkpoint/interop.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_chimed.checkpoint import interop
from megatron_chimed.checkpoint.layout import (
    TOKENIZER,
    copy_tokenizer,
    iteration_dir,
    write_latest,
    write_metadata,
)
from megatron_chimed.convert.buffers import Buffer, nbytes
from megatron_chimed.convert.hf_folder import HFCheckpoint
from megatron_chimed.convert.mapping import Entry
from megatron_chimed.convert.splice import (
    RowBlock,
    RowSource,
    Spliced,
    num_rows,
    row_bytes,
    segments,
    to_megatron_runs,
)
from megatron_chimed.convert.staging import check_output, staged_output
from megatron_chimed.convert.streaming_save import Planned, save_streaming, single_process_group
from megatron_chimed.convert.tokenizer_files import check_tokenizer

# The names the converter writes are the TE spec's; megatron-core's local spec saves and loads
# the same keys, so a converted checkpoint loads into either.
CHECKPOINT_KEY_SPEC = "transformer_engine"


def megatron_sharded_state_dict(
    hf: HFCheckpoint, dtype: torch.dtype, on_tensor: tqdm
) -> tuple[dict, dict]:
    """The sharded state dict a TP=1 GPTModel of this shape saves, with placeholders for data,
    and the plan: each chunk's size and what builds it from the HF shards when it is written
    (as byte ranges of the HF files, where the HF tensors allow it: see splice.py)."""
    from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor

    model, mapping = hf.model, hf.mapping
    layers = model.num_layers
    sharded: dict = {}
    producers = {}
    work: tuple[Buffer, Buffer] | None = None
    # One never-written buffer stands in for every tensor's data (streaming_save.py): its
    # pages are reserved, not touched, so they never count in RSS.
    shapes = [(entry.megatron_shape(model), dtype) for entry, _ in mapping.entries(model)]
    placeholder = Buffer(max(nbytes(shape, dtype) for shape, dtype in shapes))
    for entry, layer in mapping.entries(model):
        key = mapping.checkpoint_key(entry, layer)
        shape = entry.megatron_shape(model)
        data = placeholder.tensor(shape, dtype)
        if layer is None:
            sharded[key] = ShardedTensor.from_rank_offsets(key, data, replica_id=0)
            offset = (0,) * len(shape)
        else:
            # Layers are stacked along a prepended axis, as megatron's TransformerBlock saves.
            sharded[f"{key}.{layer}"] = ShardedTensor.from_rank_offsets(
                key, data, (0, layer, layers), replica_id=0, prepend_axis_num=1
            )
            offset = (layer,) + (0,) * len(shape)
            # Each linear module also saves an (empty on the local spec) `_extra_state`.
            module_key = key.rsplit(".", 1)[0] + "._extra_state"
            sharded[f"{module_key}.{layer}"] = ShardedObject(
                module_key, None, (layers,), (layer,), replica_id=0
            )
        sources = _row_sources(hf, mapping.hf_names(entry, layer), dtype)
        if sources is not None:
            spliced = Spliced(shape, dtype, segments(to_megatron_runs(entry, model), sources))
            produce = partial(_counted, spliced, on_tensor)
        else:
            work = work or _workspace(hf)
            produce = partial(_produce, hf, entry, layer, dtype, on_tensor, work)
        producers[(key, offset)] = Planned(nbytes(shape, dtype), produce)
    return sharded, producers


def _row_sources(hf: HFCheckpoint, names: tuple[str, ...], dtype: torch.dtype) -> list | None:
    """Where the rows of each HF tensor are, if they can be copied as bytes: their byte range
    in the file is known (hf_folder.py) and their dtype is the output's."""
    infos = [hf.tensors[name] for name in names]
    if any(info.offset is None or info.dtype != dtype for info in infos):
        return None
    return [
        RowSource(row_bytes(i.shape, i.dtype), (RowBlock(0, num_rows(i.shape), i.file, i.offset),))
        for i in infos
    ]


def _counted(spliced: Spliced, bar: tqdm) -> Spliced:
    bar.update(sum(length for path, _, length in spliced.segments if path is not None))
    return spliced


def _workspace(hf: HFCheckpoint) -> tuple[Buffer, Buffer]:
    """A buffer for the HF parts of the largest entry and one for its megatron tensor.

    Reuse is safe because PyTorch's serial writer saves each tensor before asking for the next.
    """
    mapping, model = hf.mapping, hf.model
    read = build = 0
    for entry, layer in mapping.entries(model):
        read = max(read, sum(hf.nbytes(name) for name in mapping.hf_names(entry, layer)))
        first = hf.tensors[mapping.hf_names(entry, layer)[0]].dtype
        build = max(build, nbytes(entry.megatron_shape(model), first))
    return Buffer(read), Buffer(build)


def _produce(
    hf: HFCheckpoint,
    entry: Entry,
    layer: int | None,
    dtype: torch.dtype,
    bar: tqdm,
    work: tuple[Buffer, Buffer],
) -> torch.Tensor:
    read, build = work
    names = hf.mapping.hf_names(entry, layer)
    parts, offset = [], 0
    for name in names:
        info = hf.tensors[name]
        parts.append(hf.read(name, read.tensor(info.shape, info.dtype, offset)))
        offset += hf.nbytes(name)
    out = build.tensor(entry.megatron_shape(hf.model), parts[0].dtype)
    tensor = entry.to_megatron(parts, hf.model, out)
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    bar.update(offset)
    return tensor


def hf_to_megatron(
    hf_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: torch.dtype | None = None,
    target_tp: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert; `dtype` None keeps the HF dtype. `target_tp` only checks early that the model
    can be split that way (the checkpoint itself loads at any valid TP)."""
    out = Path(out_dir)
    check_output(out, overwrite)
    hf = HFCheckpoint(hf_dir)
    hf.model.validate(tensor_parallel=target_tp)
    has_tokenizer = check_tokenizer(hf.directory, hf.model, str(hf.directory / "config.json"))
    dtype = dtype or hf.dtype
    generation_config = hf.directory / "generation_config.json"
    metadata = {
        "kind": "converted",
        "iteration": 0,
        "architecture": hf.mapping.architecture,
        "model": asdict(hf.model),
        "dtype": str(dtype).removeprefix("torch."),
        "spec": CHECKPOINT_KEY_SPEC,
        "source": str(hf.directory.resolve()),
        "hf_config": hf.hf_config,
        "hf_generation_config": (
            json.loads(generation_config.read_text()) if generation_config.is_file() else None
        ),
    }
    total = sum(hf.nbytes(key) for key in hf.tensors)
    import megatron.core.dist_checkpointing  # noqa: F401  (slow: before the progress bar starts)

    with (
        tqdm(
            total=total, unit="B", unit_scale=True, desc="HF -> megatron", disable=not progress
        ) as bar,
        staged_output(out, overwrite) as tmp,
        single_process_group(),
    ):
        sharded, producers = megatron_sharded_state_dict(hf, dtype, bar)
        ckpt = iteration_dir(tmp, 0)
        save_streaming({"model": sharded}, producers, ckpt)
        if has_tokenizer:
            copy_tokenizer(hf.directory, tmp / TOKENIZER)
        # Megatron-LM's args and Megatron-Bridge's run_config.yaml beside chimed.json, naming
        # the final folder (tmp is renamed to `out`).
        write_metadata(ckpt, interop.write(ckpt, metadata, root=out))
        write_latest(tmp, 0)
    return out
