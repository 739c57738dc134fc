"""Per-source sampling (`max_samples`, `weight`) decided before encoding.

A source's samples are drawn from the records the encoder keeps, in reading order: the cap
takes a seeded random subset, the weight repeats it and adds a random fraction (`choose`).
Which records the encoder keeps is known before encoding them: a record is dropped only when
it has no response, an empty one (both read from its text: `encode.drop_reason`) or a response
too long for a row even beside an empty question. `KeepCheck` proves the last one false from
an upper bound on the response's token count that costs a sentencepiece normalisation, not an
encoding; the few records it cannot vouch for are encoded to find out. So the records drawn
are those of encoding everything first, and only they (and the unsure ones) are encoded.
"""

from __future__ import annotations

import re

import numpy as np

from megatron_chimed.data.sft.encode import Encoder
from megatron_chimed.data.template import TagTemplate
from megatron_chimed.tokenizer import ZiyaTokenizer


def choose(count: int, max_samples: int | None, weight: float, rng: np.random.Generator):
    """Indices of a source's samples after the cap (a random subset) and the weight (whole
    repeats plus a random fraction)."""
    base = np.arange(count)
    if max_samples is not None and max_samples < count:
        base = np.sort(rng.permutation(count)[:max_samples])
    whole, fraction = divmod(weight, 1.0)
    extra = rng.permutation(base)[: round(fraction * len(base))]
    return np.concatenate([base] * int(whole) + [extra])


def selects_subset(max_samples: int | None, weight: float) -> bool:
    """Whether sampling may leave some kept records out (else every one is encoded anyway)."""
    return max_samples is not None or weight < 1.0


class KeepCheck:
    """`surely_kept(record, instruction)`: True only when the encoder is certain to keep the
    record (it may still cut its history or question); False means "encode it to know".

    Sound for a tag template (ziya, ziya_brackets) with a sentencepiece tokenizer: the pieces of
    a text partition its normalised form, each piece covering at least one UTF-8 byte of it
    (a byte-fallback piece exactly one), so a text has at most as many ids as its normalised
    form has bytes. Any other template or tokenizer is never vouched for (`supported`)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        tokenizer = encoder.tokenizer
        self.supported = isinstance(encoder.template, TagTemplate) and isinstance(
            tokenizer, ZiyaTokenizer
        )
        # Text holding an added token's string is split around it: not covered by the bound.
        added = sorted(tokenizer.added) if self.supported else []
        self._added = re.compile("|".join(map(re.escape, added))) if added else None
        self._min_prompt: dict[str | None, int] = {}

    def surely_kept(self, record: dict, instruction: str | None) -> bool:
        if not self.supported:
            return False
        messages = record["messages"]
        if len(messages) % 2 or messages[-1]["role"] != "assistant":
            return False
        response = messages[-1]["content"].strip()
        if self._added is not None and self._added.search(response):
            return False
        # ids <= bytes of the normalised text (+1 for a dummy-prefix piece) + `</s>`
        bound = len(self.encoder.tokenizer.sp.normalize(response).encode()) + 2
        if instruction not in self._min_prompt:
            if len(self._min_prompt) >= 4096:  # per-record system prompts: keep it bounded
                self._min_prompt.clear()
            self._min_prompt[instruction] = self.encoder.min_prompt_length(instruction)
        return 1 + self._min_prompt[instruction] + bound <= self.encoder.budget
