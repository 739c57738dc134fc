"""MegatronLoglikelihood: lm-eval's continuation scores on the Megatron model (TP=1, in this
process) equal lm-eval's own, stored in tests/eval/fixtures/lm_eval; at TP=2 (and TP=1 after
a 2-process launch) in tests/generation/test_generation_tp.py."""

from __future__ import annotations

import pytest

from megatron_chimed.testing.eval_reference import LM_EVAL_FIXTURE, read_reference

REFERENCE = read_reference(LM_EVAL_FIXTURE / "reference.json")


class NoGeneration:
    """The wrapped EvalModel: these tests only score continuations."""

    def generate(self, prompts, max_new_tokens, seed):
        raise AssertionError("not called")

    def next_token_logprobs(self, prompts, candidates):
        raise AssertionError("not called")


@pytest.fixture(scope="module")
def megatron_scorer(tiny_ziya_fp32):
    from megatron_chimed.convert import load_hf_weights
    from megatron_chimed.eval.megatron_model import MegatronLoglikelihood
    from megatron_chimed.model import ParallelConfig, build_model
    from megatron_chimed.platform import destroy, initialize
    from megatron_chimed.testing.tiny_ziya import TINY
    from megatron_chimed.tokenizer import ZiyaTokenizer

    initialize(tensor_parallel=1)
    try:
        model = build_model(TINY, ParallelConfig(tensor_model_parallel_size=1), "fp32")
        load_hf_weights(model, tiny_ziya_fp32)
        # batch_size 3: rows of different lengths share a right-padded batch
        yield MegatronLoglikelihood(NoGeneration(), model, ZiyaTokenizer(tiny_ziya_fp32), 3)
    finally:
        destroy()


def test_loglikelihoods_equal_lm_eval_s(megatron_scorer):
    docs = [doc for docs in REFERENCE["samples"].values() for doc in docs]
    requests = [(d["context"], c) for d in docs for c in d["continuations"]]
    expected = [ll for d in docs for ll in d["loglikelihoods"]]
    assert megatron_scorer.loglikelihood(requests) == pytest.approx(expected, abs=1e-5)
    # one request alone scores as in a padded batch of others
    assert megatron_scorer.loglikelihood(requests[-1:]) == pytest.approx(expected[-1:], abs=1e-5)


def test_sampling_passes_to_the_wrapped_model(megatron_scorer):
    from megatron_chimed.config.stages import GenerationConfig

    class WithCfg(NoGeneration):
        cfg = GenerationConfig()

    megatron_scorer_cfg = type(megatron_scorer)(WithCfg(), None, None)
    sampled = megatron_scorer_cfg.with_sampling(1.0, 0.85)
    assert (sampled.inner.cfg.temperature, sampled.inner.cfg.top_p) == (1.0, 0.85)
    assert WithCfg.cfg.temperature == 0.0  # the original keeps its greedy decoding
