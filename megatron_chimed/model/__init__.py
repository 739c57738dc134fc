"""The Ziya (LLaMA-family) model on megatron-core."""

from megatron_chimed.config.schema import ModelConfig, ParallelConfig
from megatron_chimed.model.builder import (
    build_model,
    resolve_transformer_impl,
    transformer_config,
    unwrap,
)

__all__ = [
    "ModelConfig",
    "ParallelConfig",
    "build_model",
    "resolve_transformer_impl",
    "transformer_config",
    "unwrap",
]
