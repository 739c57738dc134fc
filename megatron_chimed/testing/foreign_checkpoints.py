"""Checkpoints laid out as Megatron-Bridge 0.6 and Megatron-LM (megatron-core 0.19) write them,
made from one of our converted checkpoints: neither tool is installed here, so their layouts
are rebuilt from their sources (Bridge: training/checkpointing.py save_checkpoint and
model_load_save.save_megatron_model; Megatron-LM: training/checkpointing.py).

Both re-save the converted weights with megatron-core's own `dist_checkpointing.save` (layers
stacked per layer, as a GPTModel's sharded state dict does), under the "model" key, with the
common state each tool adds; nothing of ours (chimed.json, latest, manifest, common.pt,
run_config.yaml of ours) is carried over.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from megatron_chimed.config.schema import ModelConfig

ROW_KEYS = ("embedding.word_embeddings.weight", "output_layer.weight")


def _tensors(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a torch_dist folder, whole (layer-stacked ones with their layer axis)."""
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(ckpt_dir))
    tensors = {
        key: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        for key, meta in reader.read_metadata().state_dict_metadata.items()
        if isinstance(meta, TensorStorageMetadata)
    }
    load(tensors, storage_reader=reader, no_dist=True)
    return tensors


def _save(tensors: dict[str, torch.Tensor], num_layers: int, common: dict, out: Path) -> None:
    """megatron-core's torch_dist save of `tensors` under "model", plus `common`."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    from megatron_chimed.convert.streaming_save import single_process_group
    from megatron_chimed.platform import cpu_compat

    cpu_compat.apply()  # megatron's own writer synchronizes CUDA; a no-op with a GPU
    sharded: dict[str, Any] = {}
    for key, tensor in tensors.items():
        if key.startswith("decoder.layers."):
            for layer in range(num_layers):
                sharded[f"{key}.{layer}"] = ShardedTensor.from_rank_offsets(
                    key, tensor[layer].clone(), (0, layer, num_layers), replica_id=0,
                    prepend_axis_num=1,
                )  # fmt: skip
        else:
            sharded[key] = ShardedTensor.from_rank_offsets(key, tensor.clone(), replica_id=0)
    out.mkdir(parents=True)
    with single_process_group():
        dist_checkpointing.save({"model": sharded, **common}, str(out))


def _converted(converted_root: Path) -> tuple[Path, ModelConfig]:
    from megatron_chimed.checkpoint.layout import read_metadata, resolve

    ckpt = resolve(converted_root)
    return ckpt, ModelConfig(**read_metadata(ckpt)["model"])


def bridge_divisor(vocab_size: int) -> int:
    """Bridge's make_vocab_size_divisible_by: the largest power of 2 up to 128 dividing it."""
    base = 128
    while vocab_size % base:
        base //= 2
    return base


def make_bridge_checkpoint(converted_root: Path, tokenizer_dir: Path, out: Path) -> Path:
    """What `AutoBridge.import_ckpt(hf, out)` writes for the same HF model (returns `out`):

        out/latest_checkpointed_iteration.txt   "0" (Bridge writes Megatron-LM's tracker too)
        out/latest_train_state.pt               TrainState.state_dict() tensors
        out/iter_0000000/                       torch_dist; common: checkpoint_version 3.0,
                                                iteration 0 (no Megatron-LM args)
          run_config.yaml                       ConfigContainer.to_yaml: model = LlamaBridge's
                                                GPTModelProvider (vocab_size = the HF vocabulary,
                                                not padded: should_pad_vocab false)
          train_state.pt
          tokenizer/                            save_pretrained of the HF tokenizer

    The embedding and output layer keep the HF vocabulary's rows only, as Bridge stores them.
    `tokenizer_dir`: the files its save_pretrained would write (tokenizer.json and config)."""
    ckpt, model = _converted(converted_root)
    tensors = _tensors(ckpt)
    for key in ROW_KEYS:
        tensors[key] = tensors[key][: model.vocab_size]
    iteration_dir = out / "iter_0000000"
    _save(tensors, model.num_layers, {"checkpoint_version": 3.0, "iteration": 0}, iteration_dir)
    dtype = tensors[ROW_KEYS[0]].dtype
    dtype_target = {"_target_": str(dtype), "_call_": False}
    provider = {
        "_target_": "megatron.bridge.models.gpt_provider.GPTModelProvider",
        "num_layers": model.num_layers, "hidden_size": model.hidden_size,
        "ffn_hidden_size": model.ffn_hidden_size, "num_attention_heads": model.num_attention_heads,
        "num_query_groups": model.num_query_groups, "kv_channels": model.head_dim,
        "vocab_size": model.vocab_size, "should_pad_vocab": False,
        "make_vocab_size_divisible_by": bridge_divisor(model.vocab_size),
        "seq_length": model.max_position_embeddings, "layernorm_epsilon": model.norm_epsilon,
        "init_method_std": model.init_method_std, "attention_dropout": 0.0, "hidden_dropout": 0.0,
        "share_embeddings_and_output_weights": not model.untie_embeddings_and_output_weights,
        "add_qkv_bias": False, "add_bias_linear": False, "qk_layernorm": False,
        "rotary_base": int(model.rotary_base), "rotary_percent": 1.0, "rotary_interleaved": False,
        "position_embedding_type": "rope", "normalization": "RMSNorm", "gated_linear_unit": True,
        "activation_func": {"_target_": "torch.nn.functional.silu", "_call_": False},
        "bias_activation_fusion": True, "masked_softmax_fusion": True, "persist_layer_norm": True,
        "bias_dropout_fusion": True, "apply_rope_fusion": True,
        "fp16": dtype == torch.float16, "bf16": dtype == torch.bfloat16,
        "params_dtype": dtype_target, "pipeline_dtype": None,
        "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
        "context_parallel_size": 1, "sequence_parallel": False, "hf_model_id": "tiny_ziya",
        "transformer_layer_spec": {
            "_target_": "megatron.bridge.models.gpt_provider.default_layer_spec", "_call_": False,
        },
    }  # fmt: skip
    config = {
        "_target_": "megatron.bridge.training.config.ConfigContainer",
        "rng": {"_target_": "megatron.bridge.training.config.RNGConfig", "seed": 1234},
        "train": None,
        "model": provider,
        "optimizer": {"_target_": "megatron.core.optimizer.OptimizerConfig", "lr": None},
        "ddp": None,
        "scheduler": None,
        "dataset": None,
        "logger": {"_target_": "megatron.bridge.training.config.LoggerConfig"},
        "tokenizer": {
            "_target_": "megatron.bridge.training.tokenizers.config.TokenizerConfig",
            "tokenizer_type": "HuggingFaceTokenizer",
            "tokenizer_model": "tiny_ziya",
            "hf_tokenizer_kwargs": {},
        },
        "checkpoint": {
            "_target_": "megatron.bridge.training.config.CheckpointConfig",
            "save": str(out),
            "save_optim": False,
            "save_rng": False,
            "ckpt_format": "torch_dist",
            "async_save": False,
            "dist_ckpt_optim_fully_reshardable": True,
        },
        "dist": None,
    }
    (iteration_dir / "run_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    train_state = {
        "step": torch.tensor(0), "consumed_train_samples": torch.tensor(0),
        "skipped_train_samples": torch.tensor(0), "consumed_valid_samples": torch.tensor(0),
        "floating_point_operations_so_far": torch.tensor(0.0, dtype=torch.float64),
        "do_train": torch.tensor(False), "do_valid": torch.tensor(False),
        "do_test": torch.tensor(False),
    }  # fmt: skip
    torch.save(train_state, iteration_dir / "train_state.pt")
    shutil.copy(iteration_dir / "train_state.pt", out / "latest_train_state.pt")
    (out / "latest_checkpointed_iteration.txt").write_text("0")
    shutil.copytree(tokenizer_dir, iteration_dir / "tokenizer")
    return out


def megatron_lm_args(model: ModelConfig, tokenizer_model: str, dtype: torch.dtype) -> Any:
    """Megatron-LM's args as its pretrain_gpt.py leaves them for a LLaMA run (the fields a
    loader reads; vocab_size None: Megatron-LM sizes the vocabulary from the tokenizer)."""
    from megatron.core.transformer.enums import AttnBackend

    return argparse.Namespace(
        num_layers=model.num_layers, hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size, num_attention_heads=model.num_attention_heads,
        group_query_attention=False, num_query_groups=1, kv_channels=model.head_dim,
        seq_length=512, max_position_embeddings=model.max_position_embeddings,
        position_embedding_type="rope", use_rotary_position_embeddings=True,
        add_position_embedding=False, rotary_base=int(model.rotary_base), rotary_percent=1.0,
        rotary_interleaved=False, add_bias_linear=False, add_qkv_bias=False, swiglu=True,
        squared_relu=False, untie_embeddings_and_output_weights=True, normalization="RMSNorm",
        norm_epsilon=model.norm_epsilon, apply_layernorm_1p=False, init_method_std=0.02,
        attention_dropout=0.0, hidden_dropout=0.0, num_experts=None,
        multi_latent_attention=False, attention_backend=AttnBackend.auto,
        tokenizer_type="HuggingFaceTokenizer", tokenizer_model=tokenizer_model, vocab_size=None,
        make_vocab_size_divisible_by=128, padded_vocab_size=model.padded_vocab_size(1),
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, ckpt_format="torch_dist",
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, params_dtype=dtype,
        iteration=5, consumed_train_samples=40, async_save=False,
    )  # fmt: skip


def make_megatron_lm_checkpoint(
    converted_root: Path, tokenizer_model: str, out: Path, legacy_common: bool = False
) -> Path:
    """What Megatron-LM's save_checkpoint writes at iteration 5 (returns `out`):

        out/latest_checkpointed_iteration.txt   "5"
        out/iter_0000005/                       torch_dist; common state: args (Namespace),
                                                checkpoint_version 3.0, iteration 5
          common.pt                             only with `legacy_common` (megatron-core <=
                                                0.18 kept the common state there)

    No tokenizer is stored: args.tokenizer_model names it (`tokenizer_model`). The embedding
    keeps Megatron-LM's padding (128 x TP rows), as ours."""
    ckpt, model = _converted(converted_root)
    tensors = _tensors(ckpt)
    dtype = tensors[ROW_KEYS[0]].dtype
    common = {
        "args": megatron_lm_args(model, tokenizer_model, dtype),
        "checkpoint_version": 3.0,
        "iteration": 5,
        "num_floating_point_operations_so_far": 0,
    }
    iteration_dir = out / "iter_0000005"
    _save(tensors, model.num_layers, {} if legacy_common else common, iteration_dir)
    if legacy_common:
        torch.save(common, iteration_dir / "common.pt")
    (out / "latest_checkpointed_iteration.txt").write_text("5")
    return out
