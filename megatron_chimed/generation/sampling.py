"""How the next token is chosen: greedy / top-k / top-p sampling (settings: GenerationConfig,
config/stages.py).

Sampling runs on the full-vocabulary logits (gathered across TP ranks) with a
`torch.Generator` seeded from the config, so for a given seed every TP rank, and every TP size,
draws the same tokens from (numerically) the same distribution.
"""

from __future__ import annotations

import torch

from megatron_chimed.config.stages import GenerationConfig


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
