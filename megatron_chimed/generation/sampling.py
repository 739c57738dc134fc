"""How the next token is chosen: greedy / top-k / top-p sampling (settings: GenerationConfig,
config/stages.py), the same for the static and the dynamic engine.

Sampling draws no state from a generator. Each answer has a key (the seed and the answer's
row: `row_keys`), and the token at position p of that answer is the Gumbel-max of the filtered
logits with noise that is a hash of (key, p, token id). A token therefore depends only on the
answer, its position and the logits: not on which answers share the batch, in which order the
continuous-batching engine admits them, the batch size, the TP size or the number of
data-parallel groups (a resumed RS shard redraws exactly what it drew before). Gumbel-max
samples softmax(filtered logits / temperature) exactly, as torch.multinomial would, and it is
robust where two engines' logits differ in the last bit: a token at the top-p edge that one
engine keeps and the other drops changes the draw only if it would have won it (an inverse-CDF
draw would shift every token's interval).

The hash works on int64 tensors kept below 2**32 (every product fits in 63 bits), so CPU
and GPU compute the same bits.
"""

from __future__ import annotations

import torch

from megatron_chimed.config.stages import GenerationConfig

_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # odd, spreads consecutive ids over the 32-bit range


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


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of int64 values in [0, 2**32) (Wellons' two-round
    xorshift-multiply, with odd multipliers below 2**31 so that every product fits in 63 bits
    and CPU and GPU compute the same bits): a bijection whose output bits each depend on every
    input bit."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK
    return x ^ (x >> 16)


def row_keys(seed: int, rows: torch.Tensor) -> torch.Tensor:
    """The key of each answer: a hash of the seed (any size) and the answer's row number."""
    seed_low = torch.tensor(seed & _MASK, dtype=torch.int64, device=rows.device)
    seed_high = torch.tensor((seed >> 32) & _MASK, dtype=torch.int64, device=rows.device)
    key = mix32(seed_low ^ mix32(seed_high ^ _GOLDEN))
    return mix32(key ^ mix32(rows.long() & _MASK))


_token_hashes: dict[tuple[int, torch.device], torch.Tensor] = {}


def _token_hash(vocab: int, device: torch.device) -> torch.Tensor:
    """mix32 of every token id (computed once per vocabulary size and device)."""
    found = _token_hashes.get((vocab, device))
    if found is None:
        ids = torch.arange(vocab, device=device, dtype=torch.int64)
        found = _token_hashes[(vocab, device)] = mix32(ids ^ _GOLDEN)
    return found


def keyed_uniform(keys: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] uniforms in (0, 1): a hash of (row key, position, token id)."""
    step = mix32(keys.long() ^ mix32(positions.long() & _MASK)).unsqueeze(-1)
    bits = mix32(step ^ _token_hash(vocab, keys.device).unsqueeze(0))
    return ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))


def next_tokens(
    logits: torch.Tensor,
    cfg: GenerationConfig,
    keys: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token id per row of `logits` [batch, vocab] (fp32, padded ids already masked).
    Sampling needs each row's answer key (`row_keys`) and the position the token will take."""
    if cfg.greedy:
        return logits.argmax(dim=-1)
    if keys is None or positions is None:
        raise ValueError("sampling needs each row's key and position")
    logits = filter_top_k_top_p(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    gumbel = -torch.log(-torch.log(keyed_uniform(keys, positions, logits.size(-1))))
    return (logits + gumbel).argmax(dim=-1)
