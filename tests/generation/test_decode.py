"""The static engine's decode loop and sampling on a scripted model (one process, no torchrun).
The dynamic engine needs a real megatron model: test_dynamic.py, test_generation_tp.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from megatron_chimed.generation import GenerationConfig, generate, generate_ids
from megatron_chimed.generation.api import cut_at_stop_strings
from megatron_chimed.generation.sampling import (
    candidates,
    first_in_nucleus,
    keep_top_k,
    keyed_uniform,
    mix32,
    next_tokens,
    row_keys,
)

VOCAB, PADDED, EOS, HUMAN = 2000, 2048, 2, 1998


class CountingModel(torch.nn.Module):
    """A scripted LM with megatron's call signature: after token t it predicts t + 1, and every
    padded id gets an even higher logit, so only a masked generator counts correctly."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # where the loop puts its tensors
        self.max_sequence_length = 64
        self.calls: list[tuple[int, bool]] = []  # (window length, KV cache used) per forward

    def forward(self, tokens, positions, mask, inference_context=None, runtime_gather_output=None):
        assert runtime_gather_output  # logits must be gathered over the full vocabulary
        self.calls.append((tokens.size(1), inference_context is not None))
        logits = torch.zeros(*tokens.shape, PADDED)
        logits[..., VOCAB:] = 100.0
        return logits.scatter(-1, ((tokens + 1) % VOCAB).unsqueeze(-1), 10.0)


@pytest.fixture(scope="module", autouse=True)
def megatron_world():
    from megatron_chimed.platform import destroy, initialize

    initialize(tensor_parallel=1)
    yield
    destroy()


STATIC = GenerationConfig(max_new_tokens=5, engine="static")


def run(prompts: list[list[int]], **overrides) -> list[list[int]]:
    cfg = dataclasses.replace(STATIC, **overrides)
    return generate_ids(CountingModel(), prompts, cfg, VOCAB, [EOS, HUMAN])


def test_greedy_follows_the_model_and_skips_padded_ids() -> None:
    assert run([[1, 10]]) == [[11, 12, 13, 14, 15]]


def test_stops_at_eos_and_at_human_without_returning_them() -> None:
    assert run([[1, 0]]) == [[1]]
    assert run([[1, 1995]]) == [[1996, 1997]]
    assert run([[1, 1997]]) == [[]]


def test_mixed_prompt_lengths_each_continue_their_own_prompt() -> None:
    prompts = [[1, 500, 501, 502, 503], [1, 50], [1, 1996], [1, 7, 8]]
    assert run(prompts, batch_size=4) == [
        [504, 505, 506, 507, 508],
        [51, 52, 53, 54, 55],
        [1997],
        [9, 10, 11, 12, 13],
    ]


def test_kv_cache_feeds_one_token_per_step_after_the_prefill() -> None:
    model = CountingModel()
    cfg = GenerationConfig(max_new_tokens=3, engine="static")
    assert generate_ids(model, [[1, 5, 6], [1, 9]], cfg, VOCAB, [EOS]) == [[7, 8, 9], [10, 11, 12]]
    # prefill to the shorter prompt, one teacher-forced step, then decode until both have 3
    assert model.calls == [(2, True), (1, True), (1, True), (1, True)]
    model.calls.clear()
    cfg = dataclasses.replace(cfg, use_kv_cache=False)
    generate_ids(model, [[1, 5, 6], [1, 9]], cfg, VOCAB, [EOS])
    assert model.calls == [(2, False), (3, False), (4, False), (5, False)]


def test_prompt_plus_answer_longer_than_the_model_is_refused() -> None:
    with pytest.raises(ValueError, match="60 tokens \\+ max_new_tokens=5 exceeds .*=64"):
        run([list(range(60))])


def test_generate_returns_num_samples_texts_per_prompt(tiny_ziya: Path) -> None:
    from megatron_chimed.tokenizer import ZiyaTokenizer

    tokenizer = ZiyaTokenizer(tiny_ziya)
    prompts = [[{"role": "user", "content": "头痛怎么办？"}], "<human>:咳嗽\n<bot>:"]
    cfg = GenerationConfig(max_new_tokens=4, num_samples=3, engine="static")
    answers = generate(CountingModel(), tokenizer, prompts, cfg)
    assert [len(a) for a in answers] == [3, 3]
    # the ziya prompt ends with `:` after `<bot>`; the model counts up from it
    last = tokenizer.encode("<human>:咳嗽\n<bot>:")[-1]
    assert answers[1][0] == tokenizer.decode(list(range(last + 1, last + 5)))


def test_bracket_template_cuts_the_answer_at_the_next_turn() -> None:
    from megatron_chimed.data.template import get_template

    text = "多喝水。\n[human]:还有呢"
    assert cut_at_stop_strings(text, get_template("ziya_brackets")) == "多喝水。\n"
    assert cut_at_stop_strings(text, get_template("ziya")) == text


def test_top_k_and_top_p_keep_the_expected_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.2, 0.1]]))
    kept = lambda k: torch.isfinite(keep_top_k(logits, k))[0].tolist()
    assert kept(2) == [True, True, True, False]  # a tie at the k-th value keeps both
    assert kept(1) == [True, False, False, False]

    def in_nucleus(top_p: float) -> list[bool]:  # token t wins when it scores best, if kept
        best = lambda t: torch.nn.functional.one_hot(torch.tensor([t]), 4).float()
        return [int(first_in_nucleus(logits, best(t), top_p)) == t for t in range(4)]

    assert in_nucleus(0.45) == [True, False, False, False]
    assert in_nucleus(0.8) == [True, True, True, False]  # tied tokens are both in or both out
    assert in_nucleus(0.95) == [True, True, True, True]


def exact_nucleus_draw(logits: torch.Tensor, scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """The reference: sort every row, drop a token once the tokens above it reach top_p."""
    probs, order = torch.softmax(logits, -1).sort(-1, descending=True)
    drop = (probs.cumsum(-1) - probs >= top_p).scatter(-1, order, probs.cumsum(-1) - probs >= top_p)
    return scores.masked_fill(drop, float("-inf")).argmax(-1)


@pytest.mark.parametrize("top_p", [0.5, 0.85, 0.9, 0.99])
def test_the_nucleus_draw_equals_a_full_sort(top_p: float) -> None:
    """Flat rows (a large nucleus, the tiny model's) and peaked ones (a small one, a trained
    model's), 2000 ids: the candidate check picks what sorting the vocabulary picks."""
    gen = torch.Generator().manual_seed(int(top_p * 100))
    spread = torch.tensor([0.1, 1.0, 4.0, 12.0]).repeat_interleave(500).unsqueeze(-1)
    logits = torch.randn(2000, 2000, generator=gen) * spread
    scores = logits - torch.log(-torch.log(torch.rand(2000, 2000, generator=gen)))
    got = first_in_nucleus(logits, scores, top_p)
    assert torch.equal(got, exact_nucleus_draw(logits, scores, top_p))
    top50 = keep_top_k(logits, 50)  # top-k first, as next_tokens does: -inf outside it
    scores50 = top50 + (scores - logits)
    assert torch.equal(
        first_in_nucleus(top50, scores50, top_p), exact_nucleus_draw(top50, scores50, top_p)
    )
    assert candidates(top_p, 2000) == {0.5: 30, 0.85: 11, 0.9: 9, 0.99: 5}[top_p]


def test_when_every_candidate_is_outside_the_nucleus_the_most_likely_token_is_drawn() -> None:
    """The 1e-9 case, forced: the nucleus (top_p 0.9) is tokens 0 and 1, and the 9 best
    scores all go to tail tokens. The exact draw is token 1 (it outscores token 0); the
    candidate check, having no candidate inside, takes the most likely token."""
    logits = torch.log(torch.tensor([[0.5, 0.45] + [0.05 / 20] * 20]))
    scores = torch.cat([torch.tensor([[0.0, 1.0]]), torch.arange(22.0, 2, -1).view(1, 20)], -1)
    assert candidates(0.9, 22) == 9
    assert int(exact_nucleus_draw(logits, scores, 0.9)) == 1
    assert int(first_in_nucleus(logits, scores, 0.9)) == 0


def test_sampling_follows_the_seed_row_and_position() -> None:
    logits = torch.zeros(4, 100)
    cfg = GenerationConfig(temperature=1.0)
    rows = torch.arange(4)

    def draw(seed: int, at: int = 5, keys: torch.Tensor = rows) -> list[int]:
        return next_tokens(logits, cfg, row_keys(seed, keys), torch.full((4,), at)).tolist()

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert draw(1) != draw(1, at=6)
    assert draw(1, keys=rows.flip(0)) == draw(1)[::-1]  # a row's token follows the row
    assert draw(2**40 + 1) != draw(1)  # every bit of a large seed counts


def test_keyed_sampling_draws_from_the_softmax() -> None:
    """Gumbel-max over keyed noise: token frequencies match softmax(logits / T) and the
    top-k / top-p filters (tokens outside them are never drawn)."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rows = 20000
    logits = probs.log().expand(rows, 4).clone()
    keys = row_keys(3, torch.arange(rows))
    at = torch.zeros(rows, dtype=torch.long)
    counts = torch.bincount(
        next_tokens(logits, GenerationConfig(temperature=1.0), keys, at), minlength=4
    )
    assert (counts / rows).tolist() == pytest.approx(probs.tolist(), abs=0.015)
    top2 = GenerationConfig(temperature=1.0, top_k=2)
    counts = torch.bincount(next_tokens(logits, top2, keys, at), minlength=4) / rows
    assert counts.tolist() == pytest.approx([0.625, 0.375, 0, 0], abs=0.015)
    cold = GenerationConfig(temperature=0.25)  # p^4, renormalised: the top token dominates
    counts = torch.bincount(next_tokens(logits, cold, keys, at), minlength=4) / rows
    assert counts[0] > 0.85


def test_keyed_noise_is_uniform_and_the_hash_stays_in_32_bits() -> None:
    u = keyed_uniform(row_keys(0, torch.arange(10)), torch.arange(10), 2000).flatten()
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert torch.histc(u, bins=10, min=0, max=1).div(u.numel()).tolist() == pytest.approx(
        [0.1] * 10, abs=0.01
    )

    def reference(x: int) -> int:  # the unsigned 32-bit hash, in Python integers
        x ^= x >> 16
        x = x * 0x7FEB352D % 2**32
        x ^= x >> 15
        x = x * 0x2C1B3C6D % 2**32
        return x ^ (x >> 16)

    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 123456789, 0x9E3779B9]
    as_int32 = torch.tensor(values, dtype=torch.int64).to(torch.int32)  # the same bits
    assert (mix32(as_int32).long() % 2**32).tolist() == [reference(x) for x in values]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("temperature", -1.0),
        ("top_p", 0.0),
        ("num_samples", 0),
        ("engine", "paged"),
        ("kv_cache_gb", 0.0),
        ("kv_memory_fraction", 1.0),
        ("max_requests", 0),
    ],
)
def test_bad_settings_name_the_field(field: str, value: float) -> None:
    cfg = dataclasses.replace(GenerationConfig(), **{field: value})
    with pytest.raises(ValueError, match=f"generation.{field}="):
        cfg.validate()


def test_chat_requests_name_the_file_line_and_field(tmp_path: Path) -> None:
    from megatron_chimed.generation.chat import read_requests

    path = tmp_path / "q.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"messages": [{"role": "assistant", "content": "x"}]}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:3: field 'messages': message 0: role"):
        read_requests(path)
    path.write_text('{"prompt": "ok", "id": 1}\n{"prompt": 3}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:2: field 'prompt' must be a string"):
        read_requests(path)
    path.write_text('{"prompt": "ok", "id": 1}\n')
    assert read_requests(path) == [{"prompt": "ok", "id": 1}]
