"""Generation on the Megatron model at any TP: megatron-core's dynamic engine (continuous
batching over a paged KV cache) or its static KV cache, one API for both (api.py)."""

from megatron_chimed.config.stages import GenerationConfig
from megatron_chimed.generation.api import Prompt, encode_prompt, generate, generate_ids
from megatron_chimed.generation.decode import next_token_logprobs

__all__ = [
    "GenerationConfig",
    "Prompt",
    "encode_prompt",
    "generate",
    "generate_ids",
    "next_token_logprobs",
]
