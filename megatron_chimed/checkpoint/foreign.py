"""Checkpoints written by Megatron-LM and Megatron-Bridge: where their iteration is, and the
model shape their own metadata records, as the `chimed.json` fields the rest of the code reads.

Their layout (Megatron-LM's checkpointing.py; Bridge 0.6 adds the last three files):

    ROOT/latest_checkpointed_iteration.txt   "100" (or "release" for ROOT/release/)
    ROOT/latest_train_state.pt               Bridge: the latest iteration's TrainState
    ROOT/iter_0000100/                       torch_dist (metadata.json, .metadata, *.distcp)
      common.pt                              megatron-core <= 0.18: the common state (`args`)
      run_config.yaml                        Bridge: its ConfigContainer, `model` the provider
      train_state.pt                         Bridge
      tokenizer/                             Bridge: the tokenizer's save_pretrained files

The shape comes from Bridge's run_config.yaml `model` section (yaml.safe_load; no `_target_` is
instantiated) or from Megatron-LM's `args` in the common state (checkpoint/common_state.py:
nothing stored is run). Only LLaMA-architecture GPT models are accepted: RMSNorm, SwiGLU, RoPE,
no biases, no experts; anything else is an error naming the file and the field.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import yaml

from megatron_chimed.checkpoint import CheckpointError, common_state

TRACKER = "latest_checkpointed_iteration.txt"
RUN_CONFIG = "run_config.yaml"
DIST_MARKER = "metadata.json"  # megatron-core's mark of a torch_dist folder
TOKENIZER = "tokenizer"
CAUSAL_LM = "LlamaForCausalLM"
_ITER = re.compile(r"iter_(\d+)")

log = logging.getLogger(__name__)

# GPTModelProvider / TransformerConfig defaults for the fields a run_config may leave out.
_BRIDGE_DEFAULTS = {
    "normalization": "LayerNorm", "gated_linear_unit": False, "add_bias_linear": True,
    "add_qkv_bias": False, "position_embedding_type": "learned_absolute",
    "num_moe_experts": None, "qk_layernorm": False, "multi_latent_attention": False,
    "rotary_percent": 1.0, "rotary_interleaved": False, "kv_channels": None,
    "num_query_groups": None, "share_embeddings_and_output_weights": True,
    "should_pad_vocab": False, "make_vocab_size_divisible_by": 128, "layernorm_epsilon": 1e-5,
    "rotary_base": 10000, "seq_length": 1024, "init_method_std": 0.02,
    "tensor_model_parallel_size": 1, "activation_func": None, "bf16": False, "fp16": False,
}  # fmt: skip
# What a LLaMA GPT model has in each: (field, required value).
_BRIDGE_LLAMA = (
    ("normalization", "RMSNorm"), ("gated_linear_unit", True), ("add_bias_linear", False),
    ("add_qkv_bias", False), ("position_embedding_type", "rope"), ("num_moe_experts", None),
    ("qk_layernorm", False), ("multi_latent_attention", False), ("rotary_percent", 1.0),
    ("rotary_interleaved", False),
)  # fmt: skip
_MLM_DEFAULTS = {
    "add_qkv_bias": False, "num_experts": None, "squared_relu": False,
    "apply_layernorm_1p": False, "multi_latent_attention": False, "rotary_percent": 1.0,
    "rotary_interleaved": False, "norm_epsilon": 1e-5, "rotary_base": 10000,
    "untie_embeddings_and_output_weights": False, "init_method_std": 0.02,
    "make_vocab_size_divisible_by": 128, "tensor_model_parallel_size": 1,
}  # fmt: skip
_MLM_LLAMA = (
    ("normalization", "RMSNorm"), ("swiglu", True), ("add_bias_linear", False),
    ("add_qkv_bias", False), ("position_embedding_type", "rope"), ("num_experts", None),
    ("squared_relu", False), ("apply_layernorm_1p", False), ("multi_latent_attention", False),
    ("rotary_percent", 1.0), ("rotary_interleaved", False),
)  # fmt: skip


def is_iteration_dir(path: Path) -> bool:
    """A Bridge iteration folder (run_config.yaml) or any torch_dist one (metadata.json)."""
    return (path / RUN_CONFIG).is_file() or (path / DIST_MARKER).is_file()


def _tracked(root: Path) -> Path | None:
    """The folder Megatron-LM's tracker names, or None without a tracker."""
    tracker = root / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if text == "release":
        return root / "release"
    if not text.isdigit():
        raise CheckpointError(f"{tracker}: {text!r} is neither an iteration number nor 'release'")
    return root / f"iter_{int(text):07d}"


def find_iteration(path: str | Path) -> Path | None:
    """The iteration folder of a Megatron-LM or Bridge checkpoint at `path` (a root or the
    folder itself): the tracker's, else (as Bridge's load_megatron_model) the highest
    `iter_*`. None when `path` is neither."""
    path = Path(path)
    if is_iteration_dir(path):
        return path
    tracked = _tracked(path)
    if tracked is not None:
        if not is_iteration_dir(tracked):
            raise CheckpointError(f"{path / TRACKER} names {tracked.name}, which is not a "
                                  f"checkpoint (no {RUN_CONFIG}, no {DIST_MARKER})")  # fmt: skip
        return tracked
    numbered = [(int(m.group(1)), p) for p in path.glob("iter_*")
                if (m := _ITER.fullmatch(p.name)) and is_iteration_dir(p)]  # fmt: skip
    return max(numbered)[1] if numbered else None


def iteration_of(ckpt_dir: Path) -> int | None:
    found = _ITER.fullmatch(ckpt_dir.name)
    return int(found.group(1)) if found else None


def _llama_checks(values: dict[str, Any], expected: tuple, where: str) -> None:
    for key, want in expected:
        if values.get(key) != want:
            raise CheckpointError(f"{where}: {key}={values.get(key)!r}, expected {want!r}: not "
                                  "a LLaMA-architecture model this framework can load")  # fmt: skip


def _int(values: dict[str, Any], key: str, where: str) -> int:
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{where}: {key}={value!r}, expected a positive integer")
    return value


def _shape(values: dict[str, Any], where: str, groups: Any) -> dict[str, Any]:
    """hidden size, layers, heads, query groups and FFN; kv_channels must be hidden / heads."""
    hidden, heads = _int(values, "hidden_size", where), _int(values, "num_attention_heads", where)
    kv_channels = values.get("kv_channels")
    if kv_channels not in (None, hidden // heads) or hidden % heads:
        raise CheckpointError(
            f"{where}: kv_channels={kv_channels!r} with hidden_size={hidden} and "
            f"num_attention_heads={heads}: the head size is not hidden / heads"
        )
    return {
        "hidden_size": hidden,
        "num_layers": _int(values, "num_layers", where),
        "num_attention_heads": heads,
        "num_query_groups": heads if groups is None else groups,
        "ffn_hidden_size": _int(values, "ffn_hidden_size", where),
    }


def _vocab(vocab: int, rows: int, divisible: int) -> dict[str, int]:
    """vocab_size and make_vocab_size_divisible_by such that our padding at TP=1 gives the
    stored rows (its padding was for the TP it was saved at, or none)."""
    if math.ceil(vocab / divisible) * divisible != rows:
        vocab, divisible = rows, 1  # keep every stored row: the true size is unknown
    return {"vocab_size": vocab, "make_vocab_size_divisible_by": divisible}


def _dtype(bf16: Any, fp16: Any, params_dtype: Any) -> str:
    if bf16:
        return "bfloat16"
    if fp16:
        return "float16"
    name = common_state.opaque_name(params_dtype) or (
        params_dtype.get("_target_") if isinstance(params_dtype, dict) else None
    )
    return str(name).removeprefix("torch.") if name else "float32"


def bridge_metadata(ckpt_dir: Path) -> dict[str, Any]:
    """chimed.json's fields for a Megatron-Bridge iteration folder, from its run_config.yaml."""
    path = ckpt_dir / RUN_CONFIG
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CheckpointError(f"{path}: not YAML ({str(err).splitlines()[0]})") from None
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        raise CheckpointError(f"{path}: no 'model' section (Bridge's run_config.yaml has one)")
    where = f"{path} model"
    values = {**_BRIDGE_DEFAULTS, **model}
    _llama_checks(values, _BRIDGE_LLAMA, where)
    activation = values["activation_func"]
    target = activation.get("_target_") if isinstance(activation, dict) else activation
    if not str(target).endswith(".silu"):
        raise CheckpointError(f"{where}: activation_func={target!r}, expected silu (SwiGLU)")
    vocab = _int(values, "vocab_size", where)
    rows, divisible = vocab, 1
    if values["should_pad_vocab"]:  # padded at save for its TP, as Megatron-LM does
        divisible = values["make_vocab_size_divisible_by"] * values["tensor_model_parallel_size"]
        rows = math.ceil(vocab / divisible) * divisible
    fields = {
        "name": "megatron_bridge",
        **_shape(values, where, values["num_query_groups"]),
        **_vocab(vocab, rows, divisible),
        "norm_epsilon": float(values["layernorm_epsilon"]),
        "rotary_base": float(values["rotary_base"]),
        "max_position_embeddings": _int(values, "seq_length", where),
        "untie_embeddings_and_output_weights": not values["share_embeddings_and_output_weights"],
        "init_method_std": float(values["init_method_std"]),
    }
    return {
        "kind": "megatron-bridge",
        "iteration": iteration_of(ckpt_dir),
        "architecture": CAUSAL_LM,
        "model": fields,
        "dtype": _dtype(values["bf16"], values["fp16"], values.get("params_dtype")),
        "source": str(path),
    }


def _recorded_tokenizer(args: Any) -> Path | None:
    """The folder of the tokenizer Megatron-LM's args name (--tokenizer-model: a file or an HF
    folder), when it is still there. Megatron-LM stores no tokenizer in its checkpoints."""
    from megatron_chimed.tokenizer import has_tokenizer

    recorded = getattr(args, "tokenizer_model", None)
    if not isinstance(recorded, str) or not recorded:
        return None
    path = Path(recorded)
    folder = path if path.is_dir() else path.parent if path.is_file() else None
    return folder if folder is not None and has_tokenizer(folder) else None


def megatron_lm_metadata(ckpt_dir: Path) -> dict[str, Any]:
    """chimed.json's fields for a Megatron-LM iteration folder, from the `args` it saved."""
    state, where = common_state.read(ckpt_dir)
    args = state.get("args")
    if args is None or not hasattr(args, "__dict__"):
        raise CheckpointError(
            f"{where}: no 'args' in the common state, and the folder has no chimed.json and "
            f"no {RUN_CONFIG}: no model shape recorded"
        )
    values = {**_MLM_DEFAULTS, **vars(args)}
    where = f"{where} args"
    _llama_checks(values, _MLM_LLAMA, where)
    groups = values.get("num_query_groups") if values.get("group_query_attention") else None
    rows = _int(values, "padded_vocab_size", where)
    tokenizer = _recorded_tokenizer(args)
    vocab = values.get("vocab_size")
    if not isinstance(vocab, int) and tokenizer is not None:
        from megatron_chimed.tokenizer import load_tokenizer

        vocab = load_tokenizer(tokenizer).vocab_size
    if not isinstance(vocab, int):
        log.warning("%s: no vocab_size and no tokenizer at tokenizer_model: its %d stored "
                    "rows (padding included) are taken as the vocabulary", where, rows)  # fmt: skip
        vocab = rows
    divisible = values["make_vocab_size_divisible_by"] * values["tensor_model_parallel_size"]
    fields = {
        "name": "megatron_lm",
        **_shape(values, where, groups),
        **_vocab(vocab, rows, divisible),
        "norm_epsilon": float(values["norm_epsilon"]),
        "rotary_base": float(values["rotary_base"]),
        "max_position_embeddings": _int(values, "max_position_embeddings", where),
        "untie_embeddings_and_output_weights": bool(values["untie_embeddings_and_output_weights"]),
        "init_method_std": float(values["init_method_std"]),
    }
    iteration = state.get("iteration")
    metadata = {
        "kind": "megatron-lm",
        "iteration": iteration if isinstance(iteration, int) else iteration_of(ckpt_dir),
        "architecture": CAUSAL_LM,
        "model": fields,
        "dtype": _dtype(values.get("bf16"), values.get("fp16"), values.get("params_dtype")),
        "source": where,
    }
    if tokenizer is not None:
        metadata["tokenizer"] = str(tokenizer)
    return metadata


def read_metadata(ckpt_dir: str | Path) -> dict[str, Any]:
    """chimed.json's fields for another tool's iteration folder: Bridge's run_config.yaml
    first (it has the provider's every field), else Megatron-LM's args."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / RUN_CONFIG).is_file():
        return bridge_metadata(ckpt_dir)
    return megatron_lm_metadata(ckpt_dir)


def tokenizer_dirs(ckpt_dir: Path, metadata: dict[str, Any]) -> list[Path]:
    """Where another tool keeps the tokenizer: Bridge's iter_N/tokenizer/, the iteration folder
    itself, the folder Megatron-LM's args name."""
    found = [ckpt_dir / TOKENIZER, ckpt_dir]
    if metadata.get("tokenizer"):
        found.append(Path(metadata["tokenizer"]))
    return found
