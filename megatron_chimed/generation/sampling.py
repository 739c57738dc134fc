"""How the next token is chosen: the generation settings and greedy / top-k / top-p sampling.

Sampling runs on the full-vocabulary logits (gathered across TP ranks) with a
`torch.Generator` seeded from the config, so for a given seed every TP rank, and every TP size,
draws the same tokens from (numerically) the same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GenerationConfig:
    """Generation settings (`chimed generate` / the RS stage). `temperature=0` means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    seed: int = 1234
    num_samples: int = 1  # answers per prompt
    batch_size: int = 8  # sequences decoded together (rows = prompts x num_samples)
    use_kv_cache: bool = True  # False recomputes the whole sequence per token (tests, bench)
    template: str = "ziya"  # megatron_chimed.data.template name, for chat-message prompts
    instruction: str | None = None  # prefix of the first user message, e.g. DOCTOR_INSTRUCTION

    def validate(self) -> None:
        """Raise ValueError naming the field that is out of range."""
        checks = {
            "max_new_tokens": self.max_new_tokens >= 1,
            "temperature": self.temperature >= 0,
            "top_k": self.top_k >= 0,
            "top_p": 0 < self.top_p <= 1,
            "num_samples": self.num_samples >= 1,
            "batch_size": self.batch_size >= 1,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"generation.{field}={getattr(self, field)!r} is out of range")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """-inf on the ids past the tokenizer's vocabulary: the embedding is padded to a multiple
    of 128 x TP and those rows are untrained, so they must never be picked."""
    logits[..., vocab_size:] = float("-inf")
    return logits


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set of tokens whose
    probability reaches top_p (the most likely token always stays). Rows are [batch, vocab]."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(
    logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """One token id per row of `logits` [batch, vocab] (fp32, padded ids already masked)."""
    if cfg.greedy:
        return logits.argmax(dim=-1)
    logits = filter_top_k_top_p(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
