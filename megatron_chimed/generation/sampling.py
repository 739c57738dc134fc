"""How the next token is chosen: greedy / top-k / top-p sampling (settings: GenerationConfig,
config/stages.py), the same for the static and the dynamic engine.

Sampling draws no state from a generator. Each answer has a key (the seed and the answer's
row: `row_keys`), and the token at position p of that answer is the Gumbel-max of the filtered
logits with noise that is a hash of (key, p, token id). A token therefore depends only on the
answer, its position and the logits: not on which answers share the batch, in which order the
continuous-batching engine admits them, the batch size, the TP size or the number of
data-parallel groups (a resumed RS shard redraws exactly what it drew before). Gumbel-max
samples softmax(filtered logits / temperature) exactly, as torch.multinomial would (top-p: but
for a 1e-9 chance per token, `first_in_nucleus`), and it is
robust where two engines' logits differ in the last bit: a token at the top-p edge that one
engine keeps and the other drops changes the draw only if it would have won it (an inverse-CDF
draw would shift every token's interval).

The hash works on int32 tensors as 32-bit patterns (see `mix32`), so CPU and GPU compute the
same bits.
"""

from __future__ import annotations

import math

import torch

from megatron_chimed.config.stages import GenerationConfig

# The chance that a top-p draw takes the row's most likely token instead of the exact draw
# (see first_in_nucleus): the paper's RS run samples about 2e7 tokens, so about 0.02 times.
MISS = 1e-9
_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9 - (1 << 32)  # 0x9E3779B9 as int32: odd, spreads consecutive ids apart


def true_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """fp32 logits of the tokenizer's ids only: the embedding is padded to a multiple of
    128 x TP and those rows are untrained, so they must never be picked. Cutting them off
    (rather than setting them to -inf) also spares every sampling op their columns."""
    return logits[..., :vocab_size].float().contiguous()


def keep_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """-inf on every logit below the k-th largest of its row (a tie at the k-th value keeps
    both). Rows are [batch, vocab]."""
    kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def candidates(top_p: float, vocab: int) -> int:
    """How many of the best-scoring tokens `first_in_nucleus` looks at: enough that all of them
    fall outside the nucleus with probability at most `MISS` (see there)."""
    if top_p >= 1.0:
        return 1
    return min(vocab, max(1, math.ceil(math.log(MISS) / math.log1p(-top_p))))


def first_in_nucleus(logits: torch.Tensor, scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """The best-scoring token of each row's nucleus: the tokens whose more likely tokens
    (strictly) hold less than `top_p` of the probability (the most likely token is always in).

    The Gumbel-max draw over the nucleus is its best-scoring member. Finding the nucleus
    exactly takes a sort of the vocabulary per row (on CPU most of a decode step on a small
    model); instead the `candidates` best scores overall are checked in order. The nucleus
    holds at least `top_p` of the mass, so a draw lands outside it with probability at most
    1 - top_p, and m draws in a row at most (1 - top_p)**m <= MISS: then (about once in 1e9
    tokens) the row takes its most likely token. Each candidate's mass above is one
    `searchsorted` of the row against the candidates' logits, no sort of the vocabulary.
    """
    m = candidates(top_p, logits.size(-1))
    picked = torch.topk(scores, m, dim=-1).indices  # [rows, m], best score first
    bounds, order = torch.sort(logits.gather(-1, picked), dim=-1)  # candidates' logits, ascending
    # below[r, j]: how many candidates' logits are below token j's, so token j lies strictly
    # above candidate k (in `bounds` order) exactly when k < below[r, j].
    below = torch.searchsorted(bounds, logits)
    # (On a GPU scatter_add_ sums in no fixed order: a candidate whose mass above is within
    # rounding of top_p may fall either side, as with logits that differ in the last bit.)
    mass = logits.new_zeros(logits.size(0), m + 1).scatter_add_(
        -1, below, torch.softmax(logits, dim=-1)
    )
    above = mass.flip(-1).cumsum(-1).flip(-1)[:, 1:]  # above[k] = mass of buckets k+1..m
    inside = torch.empty_like(above).scatter_(-1, order, above) < top_p  # in `picked` order
    first = inside.to(torch.uint8).argmax(dim=-1, keepdim=True)  # the first True (or 0)
    chosen = picked.gather(-1, first).squeeze(-1)
    return torch.where(inside.any(dim=-1), chosen, logits.argmax(dim=-1))


def _int32(value: int) -> int:
    """The int32 with the bits of a value in [0, 2**32)."""
    value &= _MASK
    return value - (1 << 32) if value >= 1 << 31 else value


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' two-round xorshift-multiply): a bijection whose output
    bits each depend on every input bit. It works on int32 tensors as bit patterns: the
    products wrap modulo 2**32 (on CPU and GPU alike) and each right shift is masked to a
    logical one, so the bits are those of the unsigned hash (in a quarter of the time of
    int64 arithmetic masked to 32 bits)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * 0x2C1B3C6D
    return x ^ ((x >> 16) & 0xFFFF)


def row_keys(seed: int, rows: torch.Tensor) -> torch.Tensor:
    """The key of each answer: a hash of the seed (any size) and the answer's row number."""
    seed_low = torch.tensor(_int32(seed), dtype=torch.int32, device=rows.device)
    seed_high = torch.tensor(_int32(seed >> 32), dtype=torch.int32, device=rows.device)
    key = mix32(seed_low ^ mix32(seed_high ^ _GOLDEN))
    return mix32(key ^ mix32(rows.to(torch.int32)))


_token_hashes: dict[tuple[int, torch.device], torch.Tensor] = {}


def _token_hash(vocab: int, device: torch.device) -> torch.Tensor:
    """mix32 of every token id (computed once per vocabulary size and device)."""
    found = _token_hashes.get((vocab, device))
    if found is None:
        ids = torch.arange(vocab, device=device, dtype=torch.int32)
        found = _token_hashes[(vocab, device)] = mix32(ids ^ _GOLDEN)
    return found


def keyed_uniform(keys: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] uniforms in (0, 1): a hash of (row key, position, token id)."""
    step = mix32(keys ^ mix32(positions.to(torch.int32))).unsqueeze(-1)
    bits = mix32(step ^ _token_hash(vocab, keys.device).unsqueeze(0))
    return (((bits >> 8) & 0xFFFFFF).float() + 0.5) * (1.0 / (1 << 24))


def next_tokens(
    logits: torch.Tensor,
    cfg: GenerationConfig,
    keys: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token id per row of `logits` [batch, vocab] (fp32, `true_vocab`).
    Sampling needs each row's answer key (`row_keys`) and the position the token will take."""
    if cfg.greedy:
        return logits.argmax(dim=-1)
    if keys is None or positions is None:
        raise ValueError("sampling needs each row's key and position")
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    if cfg.top_k > 0:
        logits = keep_top_k(logits, cfg.top_k)
    # Gumbel-max: the argmax of these scores is a draw from softmax(logits).
    scores = logits - torch.log(-torch.log(keyed_uniform(keys, positions, logits.size(-1))))
    if cfg.top_p >= 1.0:
        return scores.argmax(dim=-1)
    return first_in_nucleus(logits, scores, cfg.top_p)
