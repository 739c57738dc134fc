"""The LLaMA-family model shape, as read from `conf/model/*.yaml`, and the checks on it."""

from __future__ import annotations

import math
from dataclasses import dataclass

# megatron-core's AttnBackend names (transformer/enums.py).
ATTENTION_BACKENDS = ("auto", "flash", "fused", "unfused", "local")


@dataclass
class ModelConfig:
    """Architecture of a LLaMA-family decoder (Ziya-13B-v2 in `conf/model/ziya_13b_v2.yaml`).

    ``vocab_size`` is the tokenizer's true size; the embedding is padded at build time (see
    ``padded_vocab_size``) and exports trim back to this number.
    """

    name: str = "tiny"
    hidden_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 4
    num_query_groups: int = 4
    ffn_hidden_size: int = 176
    vocab_size: int = 1000
    norm_epsilon: float = 1e-6
    rotary_base: float = 10000.0
    max_position_embeddings: int = 256
    untie_embeddings_and_output_weights: bool = True
    init_method_std: float = 0.02
    make_vocab_size_divisible_by: int = 128
    # How layers are implemented, not what they compute: `auto` = Transformer Engine (fused norms,
    # flash attention) where CUDA and TE exist, else megatron-core's local spec. Key names in
    # checkpoints differ between the two (see megatron_chimed/convert).
    transformer_impl: str = "auto"
    # Transformer Engine's attention kernel: `auto` lets TE pick per shape and GPU (cuDNN fused
    # attention on Hopper, flash-attn elsewhere), as megatron-core's default does. Forcing
    # `flash` makes megatron disable TE's fused and unfused backends, so a missing or
    # out-of-range flash-attn leaves no backend at all. `local` is megatron's own PyTorch one.
    attention_backend: str = "auto"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, tensor_parallel: int) -> int:
        """Megatron-LM's padding: a multiple of 128 x TP, so every TP shard is 128-aligned."""
        multiple = self.make_vocab_size_divisible_by * tensor_parallel
        return math.ceil(self.vocab_size / multiple) * multiple

    def validate(self, tensor_parallel: int = 1, seq_length: int | None = None) -> None:
        """Raise ValueError naming the field for a shape that cannot be built or split."""
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"model.attention_backend={self.attention_backend!r}: expected one of "
                f"{', '.join(ATTENTION_BACKENDS)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"model.num_attention_heads={self.num_attention_heads} is not divisible by "
                f"model.num_query_groups={self.num_query_groups}"
            )
        for field in ("num_attention_heads", "num_query_groups"):
            value = getattr(self, field)
            if value % tensor_parallel:
                raise ValueError(
                    f"model.{field}={value} is not divisible by "
                    f"parallel.tensor_model_parallel_size={tensor_parallel}"
                )
        if self.ffn_hidden_size % tensor_parallel:
            raise ValueError(
                f"model.ffn_hidden_size={self.ffn_hidden_size} is not divisible by "
                f"parallel.tensor_model_parallel_size={tensor_parallel}"
            )
        if seq_length is not None and seq_length > self.max_position_embeddings:
            raise ValueError(
                f"seq_length={seq_length} is longer than "
                f"model.max_position_embeddings={self.max_position_embeddings}"
            )
