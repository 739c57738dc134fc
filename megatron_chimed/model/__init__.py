"""The Ziya (LLaMA-family) model on megatron-core."""

from megatron_chimed.model.builder import (
    ParallelConfig,
    build_model,
    resolve_transformer_impl,
    transformer_config,
    unwrap,
)
from megatron_chimed.model.config import ModelConfig

__all__ = [
    "ModelConfig",
    "ParallelConfig",
    "build_model",
    "resolve_transformer_impl",
    "transformer_config",
    "unwrap",
]
