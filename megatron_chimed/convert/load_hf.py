"""Load a HF folder straight into a built megatron GPTModel, this rank's TP shard only."""

from __future__ import annotations

import os

import torch

from megatron_chimed.checkpoint.weights import layer_spec_of
from megatron_chimed.convert.hf_folder import HFCheckpoint
from megatron_chimed.model.builder import unwrap


@torch.no_grad()
def load_hf_weights(model: torch.nn.Module, hf_dir: str | os.PathLike) -> HFCheckpoint:
    """Copy every HF tensor, mapped and TP-split, into the model's parameters. Raises naming the
    parameter when the model has one the table does not cover or the shapes disagree."""
    from megatron.core import parallel_state

    hf = HFCheckpoint(hf_dir)
    gpt = unwrap(model)
    spec = layer_spec_of(gpt)
    rank = parallel_state.get_tensor_model_parallel_rank()
    size = parallel_state.get_tensor_model_parallel_world_size()
    params = dict(gpt.named_parameters())
    for entry, layer in hf.mapping.entries(hf.model):
        name = hf.mapping.parameter_name(entry, layer, spec)
        if name not in params:
            raise KeyError(f"{hf.directory}: the model has no parameter {name!r} ({spec} spec)")
        hf_tensors = [hf.read(key) for key in hf.mapping.hf_names(entry, layer)]
        shard = entry.tp_shard(entry.to_megatron(hf_tensors, hf.model), rank, size, hf.model)
        param = params.pop(name)
        if shard.shape != param.shape:
            raise ValueError(
                f"{hf.directory}: {name} is {list(param.shape)} on TP rank {rank}/{size} but the "
                f"HF weights give {list(shard.shape)}"
            )
        param.copy_(shard)
    if params:
        raise KeyError(f"{hf.directory}: no HF weights for model parameters {sorted(params)}")
    return hf
