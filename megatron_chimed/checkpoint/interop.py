"""What Megatron-LM and Megatron-Bridge need to load our checkpoints, written beside chimed.json
at conversion and at every training save (`write`):

    ROOT/latest_checkpointed_iteration.txt   Megatron-LM's tracker (layout.write_latest)
    ROOT/iter_N/common.pt       the common state, plus Megatron-LM's `args`, `checkpoint_version`
                                3.0 and `iteration` (what load_args_from_checkpoint reads)
    ROOT/iter_N/run_config.yaml Bridge 0.6's ConfigContainer: `model` a GPTModelProvider (what
                                AutoBridge.load_megatron_model / export_ckpt and the conversion
                                CLI instantiate), `tokenizer`, `checkpoint`

Why common.pt: megatron-core 0.19 keeps the common state inside the torch_dist files but reads
a `common.pt` instead when the folder has one, and megatron-core <= 0.18 reads only common.pt.
So the file holds the state the save embedded (read back here) plus the args. Their readers load
it with torch.load's default, weights-only since torch 2.6: megatron-core registers
argparse.Namespace and its enums as safe globals, and the args hold only those, torch dtypes and
plain values. Our own loaders never read it (safe_load.no_pickled_code reads the state in the
torch_dist files), so nothing of ours unpickles the Namespace.

Vocabulary: the embedding has the rows padded for the TP it was saved at. run_config.yaml gives
those rows as Bridge's vocab_size (should_pad_vocab false, so Bridge builds exactly them; its HF
export then keeps the zero rows); args give them as padded_vocab_size, and the true size as
vocab_size. A reward model (no Megatron-LM or Bridge counterpart) gets the tracker only.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from megatron_chimed.atomic import atomic_open, atomic_write_text
from megatron_chimed.checkpoint import CheckpointError, common_state, foreign, safe_load
from megatron_chimed.config.schema import ModelConfig
from megatron_chimed.tokenizer import has_tokenizer

CHECKPOINT_FORMAT = "torch_dist"
CHECKPOINT_VERSION = 3.0  # Megatron-LM's: < 3.0 reads tensor_model_parallel_size differently
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    """chimed.json's record of what wrote the checkpoint's files."""
    return {
        "checkpoint_format": CHECKPOINT_FORMAT,
        "megatron_core_version": importlib.metadata.version("megatron-core"),
    }


@dataclass(frozen=True)
class Saved:
    """What both tools' metadata says about one saved iteration."""

    model: ModelConfig
    iteration: int
    tensor_parallel: int  # the TP its embedding rows were padded for
    dtype: str  # torch dtype name of the stored weights
    seq_length: int
    tokenizer: Path | None  # the checkpoint's tokenizer folder, where it will be read
    training: bool  # has optimizer and RNG state
    consumed_samples: int = 0
    global_batch_size: int | None = None
    micro_batch_size: int | None = None
    source: str | None = None  # the HF folder a conversion read

    @property
    def rows(self) -> int:
        return self.model.padded_vocab_size(self.tensor_parallel)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def saved_from(metadata: dict[str, Any], tokenizer: Path | None) -> Saved:
    """The facts from chimed.json's fields (a conversion's or a training save's)."""
    config = metadata.get("config") or {}
    training = config.get("training") or {}
    model = ModelConfig(**metadata["model"])
    dtype = metadata.get("dtype") or _DTYPES[config.get("precision", "bf16")]
    return Saved(
        model=model,
        iteration=int(metadata["iteration"]),
        tensor_parallel=int(metadata.get("tensor_parallel", 1)),
        dtype=dtype,
        seq_length=int(training.get("seq_length") or model.max_position_embeddings),
        tokenizer=tokenizer,
        training=metadata.get("kind") == "train",
        consumed_samples=int(metadata.get("consumed_samples", 0)),
        global_batch_size=training.get("global_batch_size"),
        micro_batch_size=training.get("micro_batch_size"),
        source=metadata.get("source"),
    )


def _rotary_base(model: ModelConfig) -> int | float:
    # Both tools type it int (10000); ours is a float.
    return int(model.rotary_base) if float(model.rotary_base).is_integer() else model.rotary_base


def megatron_lm_args(saved: Saved) -> argparse.Namespace:
    """Megatron-LM's args for this model: every field its load_args_from_checkpoint reads
    (those of other architectures as their defaults), and those Bridge's
    _transformer_config_from_args reads without a default."""
    from megatron.core.transformer.enums import AttnBackend

    m = saved.model
    bf16, fp16 = saved.dtype == "bfloat16", saved.dtype == "float16"
    return argparse.Namespace(
        # Model shape (a LLaMA: RMSNorm, SwiGLU, RoPE, no biases, untied output).
        num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads, num_query_groups=m.num_query_groups,
        group_query_attention=m.num_query_groups != m.num_attention_heads,
        kv_channels=m.head_dim, seq_length=saved.seq_length,
        max_position_embeddings=m.max_position_embeddings, position_embedding_type="rope",
        add_position_embedding=False, use_rotary_position_embeddings=True,
        rotary_base=_rotary_base(m), rotary_percent=1.0, rotary_interleaved=False,
        add_bias_linear=False, add_qkv_bias=False, squared_relu=False, swiglu=True,
        untie_embeddings_and_output_weights=m.untie_embeddings_and_output_weights,
        apply_layernorm_1p=False, normalization="RMSNorm", norm_epsilon=m.norm_epsilon,
        apply_query_key_layer_scaling=False, attention_dropout=0.0, hidden_dropout=0.0,
        init_method_std=m.init_method_std, init_method_xavier_uniform=False,
        multi_latent_attention=False, is_hybrid_model=False, spec=None,
        transformer_impl="transformer_engine", attention_backend=AttnBackend.auto,
        # Multi-token prediction, experts, Mamba, heterogeneous layers: none.
        mtp_hybrid_override_pattern=None, mtp_num_layers=None, mtp_use_repeated_layer=False,
        num_experts=None, moe_layer_freq=1, moe_ffn_hidden_size=None, moe_router_topk=2,
        moe_token_dispatcher_type="allgather", moe_router_pre_softmax=False,
        moe_grouped_gemm=False, moe_single_grouped_weight=False, moe_single_grouped_bias=False,
        moe_shared_expert_intermediate_size=None, moe_router_score_function="softmax",
        moe_router_enable_expert_bias=False, moe_router_topk_scaling_factor=None,
        moe_latent_size=None, mamba_state_dim=128, mamba_head_dim=64, mamba_num_groups=8,
        mamba_num_heads=None, hybrid_layer_pattern=None,
        heterogeneous_layers_config_path=None, heterogeneous_layers_config_encoded_json=None,
        # Vocabulary and tokenizer (the HF folder: sentencepiece model + added tokens).
        vocab_size=m.vocab_size, padded_vocab_size=saved.rows,
        make_vocab_size_divisible_by=m.make_vocab_size_divisible_by,
        tokenizer_type="HuggingFaceTokenizer",
        tokenizer_model=str(saved.tokenizer) if saved.tokenizer else None,
        tiktoken_pattern=None, vocab_file=None, merge_file=None,
        # Precision and parallelism of the save.
        bf16=bf16, fp16=fp16, params_dtype=saved.torch_dtype, fp8_param_gather=False,
        tensor_model_parallel_size=saved.tensor_parallel, pipeline_model_parallel_size=1,
        virtual_pipeline_model_parallel_size=None, num_layers_per_virtual_pipeline_stage=None,
        expert_model_parallel_size=1, decoder_first_pipeline_num_layers=None,
        decoder_last_pipeline_num_layers=None, overlap_p2p_comm=False, cp_comm_type=["p2p"],
        no_persist_layer_norm=False, bias_swiglu_fusion=True, bias_gelu_fusion=False,
        config_logger_dir="",
        # Checkpoint and data position.
        ckpt_format=CHECKPOINT_FORMAT, use_dist_ckpt=True, async_save=False,
        iteration=saved.iteration, consumed_train_samples=saved.consumed_samples,
        skipped_train_samples=0, consumed_valid_samples=0,
        global_batch_size=saved.global_batch_size, micro_batch_size=saved.micro_batch_size,
        data_parallel_random_init=False,
    )  # fmt: skip


def _dtype_target(saved: Saved) -> dict[str, Any]:
    # How Megatron's yaml_utils writes a torch dtype (Bridge instantiates it without calling).
    return {"_target_": f"torch.{saved.dtype}", "_call_": False}


def bridge_run_config(saved: Saved, root: Path) -> dict[str, Any]:
    """Bridge's run_config.yaml: its ConfigContainer as to_yaml writes it, with the sections
    save_megatron_model fills (the others null). `model` is what Bridge's LlamaBridge builds
    from the HF config (provider_bridge), with our stored vocabulary rows."""
    m = saved.model
    return {
        "_target_": "megatron.bridge.training.config.ConfigContainer",
        "model": {
            "_target_": "megatron.bridge.models.gpt_provider.GPTModelProvider",
            "num_layers": m.num_layers,
            "hidden_size": m.hidden_size,
            "ffn_hidden_size": m.ffn_hidden_size,
            "num_attention_heads": m.num_attention_heads,
            "num_query_groups": m.num_query_groups,
            "kv_channels": m.head_dim,
            "vocab_size": saved.rows,
            "should_pad_vocab": False,
            "make_vocab_size_divisible_by": m.make_vocab_size_divisible_by,
            "seq_length": m.max_position_embeddings,
            "normalization": "RMSNorm",
            "layernorm_epsilon": m.norm_epsilon,
            "gated_linear_unit": True,
            "activation_func": {"_target_": "torch.nn.functional.silu", "_call_": False},
            "add_bias_linear": False,
            "add_qkv_bias": False,
            "qk_layernorm": False,
            "position_embedding_type": "rope",
            "rotary_base": _rotary_base(m),
            "rotary_percent": 1.0,
            "rotary_interleaved": False,
            "share_embeddings_and_output_weights": not m.untie_embeddings_and_output_weights,
            "init_method_std": m.init_method_std,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
            "bf16": saved.dtype == "bfloat16",
            "fp16": saved.dtype == "float16",
            "params_dtype": _dtype_target(saved),
            "pipeline_dtype": _dtype_target(saved),
            "tensor_model_parallel_size": saved.tensor_parallel,
            "pipeline_model_parallel_size": 1,
            "context_parallel_size": 1,
            "sequence_parallel": False,
            "hf_model_id": saved.source,
        },
        "tokenizer": {
            "_target_": "megatron.bridge.training.tokenizers.config.TokenizerConfig",
            "tokenizer_type": "HuggingFaceTokenizer",
            "tokenizer_model": str(saved.tokenizer) if saved.tokenizer else None,
        },
        "checkpoint": {
            "_target_": "megatron.bridge.training.config.CheckpointConfig",
            "save": str(root.resolve()),
            "ckpt_format": CHECKPOINT_FORMAT,
            "save_optim": saved.training,
            "save_rng": saved.training,
        },
        "train": None,
        "ddp": None,
        "scheduler": None,
        "dataset": None,
        "dist": None,
    }


def _saved_common_state(ckpt_dir: Path) -> dict[str, Any] | None:
    """The common state the torch_dist save embedded, through the weights-only unpickler;
    None (logged) when it refuses an item: a common.pt would then hand other tools a state
    ours cannot read, so the save goes without one, and the resume names the item."""
    from megatron.core import dist_checkpointing

    try:
        with safe_load.no_pickled_code(ckpt_dir):
            return dict(dist_checkpointing.load_common_state_dict(str(ckpt_dir)))
    except CheckpointError as err:
        log.warning("%s; no %s (Megatron-LM's args) is written", err, common_state.COMMON_PT)
        return None


def write(
    ckpt_dir: str | Path, metadata: dict[str, Any], root: str | Path | None = None
) -> dict[str, Any]:
    """Write common.pt (args) and run_config.yaml into `ckpt_dir` on rank 0 (the others return
    at once), after its torch_dist save; return `metadata` with `versions()` added. `root`: the
    checkpoint root it will be read from (a conversion writes into a staging folder)."""
    ckpt_dir = Path(ckpt_dir)
    metadata = {**metadata, **versions()}
    if dist.is_initialized() and dist.get_rank() != 0:
        return metadata
    if metadata.get("architecture") != foreign.CAUSAL_LM:
        return metadata  # a reward model: neither tool has its value head
    root = Path(root) if root is not None else ckpt_dir.parent
    # Looked for where it is now, named where it will be read.
    tokenizer = has_tokenizer(ckpt_dir.parent / foreign.TOKENIZER)
    saved = saved_from(metadata, (root / foreign.TOKENIZER).resolve() if tokenizer else None)
    common = _saved_common_state(ckpt_dir)
    if common is not None:
        common.update(
            args=megatron_lm_args(saved),
            checkpoint_version=CHECKPOINT_VERSION,
            iteration=saved.iteration,
        )
        with atomic_open(ckpt_dir / common_state.COMMON_PT, "wb") as f:
            torch.save(common, f)
    text = yaml.safe_dump(bridge_run_config(saved, root), sort_keys=False)
    atomic_write_text(ckpt_dir / foreign.RUN_CONFIG, text)
    return metadata
