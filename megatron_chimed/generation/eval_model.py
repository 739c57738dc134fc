"""The evaluation tasks' `EvalModel` on the Megatron model (any TP), next to `HFEvalModel`."""

from __future__ import annotations

import dataclasses

import torch

from megatron_chimed.config.stages import GenerationConfig
from megatron_chimed.eval.model_api import candidate_token_id
from megatron_chimed.generation.api import generate
from megatron_chimed.generation.decode import next_token_logprobs
from megatron_chimed.tokenizer import Tokenizer


def default_engine(model: torch.nn.Module) -> str:
    """The dynamic engine, except for fp32 weights on a GPU: flash-attn's paged kernels take
    bf16 / fp16 only, and an fp32 evaluation (`precision=fp32`) is an exactness choice."""
    from megatron_chimed.model import unwrap

    dtype = unwrap(model).config.params_dtype
    return "static" if torch.cuda.is_available() and dtype == torch.float32 else "dynamic"


class MegatronEvalModel:
    """`megatron_chimed.eval.model_api.EvalModel` over this rank's shard of a GPTModel.

    Prompts arrive fully rendered (see `TemplatedModel`), so they are tokenized as raw text.
    `cfg` holds the decoding settings (greedy by default); each call sets its own
    `max_new_tokens` and seed.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        cfg: GenerationConfig | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg or GenerationConfig(engine=default_engine(model))

    def generate(self, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
        cfg = dataclasses.replace(self.cfg, max_new_tokens=max_new_tokens, seed=seed, num_samples=1)
        return [answers[0] for answers in generate(self.model, self.tokenizer, prompts, cfg)]

    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[list[float]]:
        rows = [self.tokenizer.encode(p, bos=True) for p in prompts]
        logprobs = next_token_logprobs(
            self.model, rows, self.tokenizer.vocab_size, self.cfg.batch_size
        )
        return [
            [float(row[candidate_token_id(self.tokenizer.encode, p, c)]) for c in candidates]
            for row, p in zip(logprobs, prompts)
        ]
