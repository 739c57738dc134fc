"""Batched generation on the Megatron model at any TP, with megatron-core's static KV cache."""

from megatron_chimed.config.stages import GenerationConfig
from megatron_chimed.generation.api import Prompt, encode_prompt, generate
from megatron_chimed.generation.decode import generate_ids, next_token_logprobs

__all__ = [
    "GenerationConfig",
    "Prompt",
    "encode_prompt",
    "generate",
    "generate_ids",
    "next_token_logprobs",
]
