"""HF <-> megatron-core tensor mapping, one table per model family, used in both directions.

Every entry maps one megatron tensor to one or more HF tensors and knows (a) how to build the
megatron tensor from the HF ones, (b) the inverse, (c) how megatron splits it across tensor-
parallel ranks and (d) the shapes both sides must have for a given ModelConfig. Tables are
registered by the HF `architectures` name (`MAPPINGS`); a new family or head is a new table,
never a new branch.

Megatron names are the Transformer Engine spec's. They are also the dist-checkpoint keys for
both specs: megatron-core's local spec maps its separate norms onto the TE names when it builds
its sharded state dict (`sharded_state_dict_keys_map`), so one checkpoint serves both. Only the
module parameter names differ, which `parameter_name` translates with `LOCAL_SPEC_NAMES`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from megatron_chimed.config.schema import ModelConfig

# TE fuses each pre-norm into the linear layer after it; the local spec keeps separate modules.
LOCAL_SPEC_NAMES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}


def _dims(cfg: ModelConfig) -> dict[str, int]:
    """Named sizes the shape tables below refer to."""
    return {
        "hidden": cfg.hidden_size,
        "ffn": cfg.ffn_hidden_size,
        "vocab": cfg.vocab_size,
        "padded_vocab": cfg.padded_vocab_size(1),
        "kv": cfg.num_query_groups * cfg.head_dim,
        "qkv": (cfg.num_attention_heads + 2 * cfg.num_query_groups) * cfg.head_dim,
        "fc1": 2 * cfg.ffn_hidden_size,
        "one": 1,
    }


def _shape(names: tuple[str, ...], cfg: ModelConfig) -> tuple[int, ...]:
    dims = _dims(cfg)
    return tuple(dims[n] for n in names)


@dataclass(frozen=True)
class Direct:
    """One HF tensor is one megatron tensor (a rename). `tp_axis` None = replicated."""

    megatron: str
    hf: str
    shape: tuple[str, ...]
    tp_axis: int | None

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.hf,)

    def hf_shapes(self, cfg: ModelConfig) -> tuple[tuple[int, ...], ...]:
        return (_shape(self.shape, cfg),)

    def megatron_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return _shape(self.shape, cfg)

    def to_megatron(
        self, hf: list[torch.Tensor], cfg: ModelConfig, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`out`, when given, is where the result may be built (a reused buffer); a rename
        returns its input as is."""
        return hf[0]

    def to_hf(
        self, tensor: torch.Tensor, cfg: ModelConfig, out: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Views of `tensor` where possible; parts that need a copy are built in `out` (as
        many bytes as `tensor`, e.g. a reused buffer) when given."""
        return [tensor]

    def tp_shard(self, full: torch.Tensor, rank: int, size: int, cfg: ModelConfig) -> torch.Tensor:
        if self.tp_axis is None:
            return full
        return full.chunk(size, dim=self.tp_axis)[rank]


@dataclass(frozen=True)
class VocabRows(Direct):
    """Embedding / output rows: megatron pads the vocabulary with zero rows so that it splits
    into 128-aligned TP shards; HF keeps the tokenizer's true size."""

    def megatron_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return _shape(("padded_vocab", "hidden"), cfg)

    def to_megatron(
        self, hf: list[torch.Tensor], cfg: ModelConfig, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        return _pad_rows(hf[0], cfg.padded_vocab_size(1), out)

    def to_hf(
        self, tensor: torch.Tensor, cfg: ModelConfig, out: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        return [tensor[: cfg.vocab_size]]

    def tp_shard(self, full: torch.Tensor, rank: int, size: int, cfg: ModelConfig) -> torch.Tensor:
        # The padding depends on TP (a multiple of 128 x TP): redo it for this TP.
        padded = _pad_rows(full[: cfg.vocab_size], cfg.padded_vocab_size(size))
        return padded.chunk(size, dim=0)[rank]


def _pad_rows(tensor: torch.Tensor, rows: int, out: torch.Tensor | None = None) -> torch.Tensor:
    # Not F.pad: it zero-fills the whole output first, and cannot build into `out`.
    padded = torch.empty((rows, *tensor.shape[1:]), dtype=tensor.dtype) if out is None else out
    padded[: tensor.shape[0]].copy_(tensor)
    padded[tensor.shape[0] :].zero_()
    return padded


@dataclass(frozen=True)
class FusedQKV:
    """q, k, v -> `linear_qkv`, interleaved per query group: [q heads of group g, k_g, v_g].
    Groups are contiguous, so TP splits the fused weight with a plain chunk on dim 0 and each
    rank gets whole groups with their own K and V."""

    megatron: str
    q: str
    k: str
    v: str
    tp_axis: int = 0

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.q, self.k, self.v)

    def hf_shapes(self, cfg: ModelConfig) -> tuple[tuple[int, ...], ...]:
        return (_shape(("hidden", "hidden"), cfg),) + 2 * (_shape(("kv", "hidden"), cfg),)

    def megatron_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return _shape(("qkv", "hidden"), cfg)

    @staticmethod
    def _group_rows(cfg: ModelConfig) -> list[int]:
        heads_per_group = cfg.num_attention_heads // cfg.num_query_groups
        return [heads_per_group * cfg.head_dim, cfg.head_dim, cfg.head_dim]

    def to_megatron(
        self, hf: list[torch.Tensor], cfg: ModelConfig, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        groups = cfg.num_query_groups
        per_group = [t.reshape(groups, -1, t.shape[-1]) for t in hf]
        if out is None:
            return torch.cat(per_group, dim=1).reshape(-1, hf[0].shape[-1])
        torch.cat(per_group, dim=1, out=out.view(groups, -1, out.shape[-1]))
        return out

    def to_hf(
        self, tensor: torch.Tensor, cfg: ModelConfig, out: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        grouped = tensor.reshape(cfg.num_query_groups, -1, tensor.shape[-1])
        parts = grouped.split(self._group_rows(cfg), dim=1)
        if out is None:
            return [p.reshape(-1, tensor.shape[-1]) for p in parts]
        flat, start, result = out.reshape(-1), 0, []
        for part in parts:  # q, k, v one after the other in `out`
            dest = flat[start : start + part.numel()].view(part.shape)
            result.append(dest.copy_(part).view(-1, tensor.shape[-1]))
            start += part.numel()
        return result

    def tp_shard(self, full: torch.Tensor, rank: int, size: int, cfg: ModelConfig) -> torch.Tensor:
        return full.chunk(size, dim=0)[rank]


@dataclass(frozen=True)
class GatedMLP:
    """gate, up -> `linear_fc1` = [gate; up]. On TP rank r megatron holds cat(gate chunk r,
    up chunk r), because silu(gate) * up is computed locally: chunking [gate; up] is wrong."""

    megatron: str
    gate: str
    up: str
    tp_axis: int = 0

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.gate, self.up)

    def hf_shapes(self, cfg: ModelConfig) -> tuple[tuple[int, ...], ...]:
        return 2 * (_shape(("ffn", "hidden"), cfg),)

    def megatron_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return _shape(("fc1", "hidden"), cfg)

    def to_megatron(
        self, hf: list[torch.Tensor], cfg: ModelConfig, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.cat(hf, dim=0) if out is None else torch.cat(hf, dim=0, out=out)

    def to_hf(
        self, tensor: torch.Tensor, cfg: ModelConfig, out: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        return list(tensor.chunk(2, dim=0))

    def tp_shard(self, full: torch.Tensor, rank: int, size: int, cfg: ModelConfig) -> torch.Tensor:
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]])


Entry = Direct | FusedQKV | GatedMLP


@dataclass(frozen=True)
class ModelMapping:
    """The table of one HF architecture, in HF file order: before, per layer, after."""

    architecture: str
    before_layers: tuple[Entry, ...]
    per_layer: tuple[Entry, ...]
    after_layers: tuple[Entry, ...]
    megatron_layer_prefix: str = "decoder.layers."
    hf_layer_prefix: str = "model.layers.{layer}."
    hf_config_extra: dict = field(default_factory=dict)  # keys its HF config.json adds

    def entries(self, cfg: ModelConfig) -> Iterator[tuple[Entry, int | None]]:
        """(entry, layer index or None) for every tensor of a model of this shape."""
        for entry in self.before_layers:
            yield entry, None
        for layer in range(cfg.num_layers):
            for entry in self.per_layer:
                yield entry, layer
        for entry in self.after_layers:
            yield entry, None

    def hf_names(self, entry: Entry, layer: int | None) -> tuple[str, ...]:
        prefix = "" if layer is None else self.hf_layer_prefix.format(layer=layer)
        return tuple(prefix + name for name in entry.hf_names)

    def checkpoint_key(self, entry: Entry, layer: int | None) -> str:
        """The dist-checkpoint key: layers are stacked along a prepended axis, so no index."""
        return entry.megatron if layer is None else self.megatron_layer_prefix + entry.megatron

    def parameter_name(self, entry: Entry, layer: int | None, spec: str) -> str:
        """The module parameter name in a built GPTModel with this layer spec."""
        if layer is None:
            return entry.megatron
        name = entry.megatron
        if spec == "local":
            name = LOCAL_SPEC_NAMES.get(name, name)
        return f"{self.megatron_layer_prefix}{layer}.{name}"


VOCAB = ("vocab", "hidden")
LLAMA_EMBEDDING = (
    VocabRows("embedding.word_embeddings.weight", "model.embed_tokens.weight", VOCAB, tp_axis=0),
)
LLAMA_HEAD = (
    Direct("decoder.final_layernorm.weight", "model.norm.weight", ("hidden",), tp_axis=None),
    VocabRows("output_layer.weight", "lm_head.weight", VOCAB, tp_axis=0),
)
LLAMA_LAYER = (
    Direct(
        "self_attention.linear_qkv.layer_norm_weight",
        "input_layernorm.weight",
        ("hidden",),
        tp_axis=None,
    ),
    FusedQKV(
        "self_attention.linear_qkv.weight",
        q="self_attn.q_proj.weight",
        k="self_attn.k_proj.weight",
        v="self_attn.v_proj.weight",
    ),
    Direct(
        "self_attention.linear_proj.weight",
        "self_attn.o_proj.weight",
        ("hidden", "hidden"),
        tp_axis=1,
    ),
    Direct(
        "mlp.linear_fc1.layer_norm_weight",
        "post_attention_layernorm.weight",
        ("hidden",),
        tp_axis=None,
    ),
    GatedMLP("mlp.linear_fc1.weight", gate="mlp.gate_proj.weight", up="mlp.up_proj.weight"),
    Direct("mlp.linear_fc2.weight", "mlp.down_proj.weight", ("hidden", "ffn"), tp_axis=1),
)
LLAMA_CAUSAL_LM = ModelMapping("LlamaForCausalLM", LLAMA_EMBEDDING, LLAMA_LAYER, LLAMA_HEAD)

# The reward model (megatron_chimed/reward/model.py): the same trunk, and a scalar value head
# (replicated, not vocab-parallel) where the causal LM has its output layer.
LLAMA_SCORE_HEAD = (
    LLAMA_HEAD[0],
    Direct("value_head.weight", "score.weight", ("one", "hidden"), tp_axis=None),
)
LLAMA_REWARD = ModelMapping(
    "LlamaForSequenceClassification",
    LLAMA_EMBEDDING,
    LLAMA_LAYER,
    LLAMA_SCORE_HEAD,
    # One score per sequence, read by HF at the last non-pad token (pad_token_id 0 = <unk>).
    hf_config_extra={"num_labels": 1},
)

# HF `architectures[0]` -> table.
MAPPINGS: dict[str, ModelMapping] = {m.architecture: m for m in (LLAMA_CAUSAL_LM, LLAMA_REWARD)}


def mapping_for(architecture: str, where: str) -> ModelMapping:
    try:
        return MAPPINGS[architecture]
    except KeyError:
        raise ValueError(
            f"{where}: architectures={architecture!r} is not supported; "
            f"known: {', '.join(sorted(MAPPINGS))}"
        ) from None
