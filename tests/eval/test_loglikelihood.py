"""lm-eval's context/continuation split, the summed score, and the wrappers that pass
continuation scoring through (chat template, data-parallel shards)."""

from __future__ import annotations

import pytest
import torch

from megatron_chimed.eval.loglikelihood import require_loglikelihood, split_pair, summed_logprob
from megatron_chimed.eval.model_api import TemplatedModel
from megatron_chimed.eval.runner import ShardedModel


def chars(text: str) -> list[int]:
    """A tokenizer that adds BOS (0) and makes one token per character."""
    return [0] + [ord(c) for c in text]


def test_continuation_is_the_tail_of_the_whole_encoding():
    context, continuation = split_pair(chars, "答案：", " A")
    assert context == [0, ord("答"), ord("案"), ord("：")]  # BOS from the tokenizer, once
    assert continuation == [ord(" "), ord("A")]


def test_trailing_spaces_of_the_context_move_to_the_continuation():
    assert split_pair(chars, "Answer: ", "A") == (chars("Answer:"), [ord(" "), ord("A")])
    with pytest.raises(ValueError, match="empty context"):
        split_pair(chars, "", " A")


def test_merged_boundary_scores_the_tokens_past_the_context_length():
    # A tokenizer that merges "：A" into one token: lm-eval then scores from the context's
    # length on, whatever the merge did to the boundary.
    def merging(text: str) -> list[int]:
        return [0] + [9 if text[i : i + 2] == "：A" else ord(c) for i, c in enumerate(text)]

    context, continuation = split_pair(merging, "：", "A")
    assert (context, continuation) == ([0, ord("：")], [ord("A")])


def test_summed_logprob_takes_each_row_s_token():
    logprobs = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]), dim=-1)
    assert summed_logprob(logprobs, [2, 0]) == pytest.approx(float(logprobs[0, 2] + logprobs[1, 0]))
    with pytest.raises(ValueError, match="no tokens"):
        summed_logprob(logprobs, [])


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def loglikelihood(self, requests):
        self.seen += requests
        return [float(len(c) + len(x)) for c, x in requests]


def test_template_wraps_the_context_only():
    inner = Recorder()
    wrapped = TemplatedModel(inner, "<human>:{prompt}\n<bot>:")
    assert wrapped.loglikelihood([("问", " A")]) == [float(len("<human>:问\n<bot>:") + 2)]
    assert inner.seen == [("<human>:问\n<bot>:", " A")]


def test_shards_score_their_share_and_come_back_in_order():
    class Numbered(Recorder):
        def loglikelihood(self, requests):
            self.seen += requests
            return [float(context[1:]) for context, _ in requests]  # "q3" -> 3.0

    requests = [(f"q{i}", " A") for i in range(5)]
    rank1 = Numbered()
    rank1_part = rank1.loglikelihood(requests[1::2])  # what rank 1 scores: requests 1, 3
    rank0 = Numbered()
    sharded = ShardedModel(rank0, 0, 2, gather=lambda local: [local, rank1_part])
    assert sharded.loglikelihood(requests) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert rank0.seen == requests[0::2]


def test_a_model_without_continuation_scores_is_named():
    class GenerateOnly:
        def generate(self, prompts, max_new_tokens, seed):
            return prompts

    with pytest.raises(TypeError, match="protocol lm_eval needs .* not GenerateOnly"):
        require_loglikelihood(GenerateOnly(), "protocol lm_eval")
    with pytest.raises(TypeError, match="not GenerateOnly"):
        TemplatedModel(GenerateOnly(), "{prompt}").loglikelihood([("q", " A")])
