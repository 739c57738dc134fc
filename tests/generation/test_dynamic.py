"""The dynamic engine (megatron-core's DynamicInferenceEngine) on the tiny model, one process:
continuous batching, KV sizing, engine reuse, and equality with the static engine.
TP=2 and `transformers` are compared in test_generation_tp.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_chimed.generation import GenerationConfig, dynamic, generate_ids, kv_budget

VOCAB, STOPS = 2000, [2, 1998]


@pytest.fixture(scope="module")
def model():
    from megatron_chimed.model import ParallelConfig, build_model
    from megatron_chimed.platform import destroy, initialize
    from megatron_chimed.testing.tiny_ziya import TINY

    initialize(tensor_parallel=1, seed=5)
    yield build_model(TINY, ParallelConfig(tensor_model_parallel_size=1), "fp32")
    destroy()


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 30, (count,), generator=gen).tolist()
    return [torch.randint(3, 1990, (n,), generator=gen).tolist() for n in lengths]


def test_continuous_batching_keeps_at_most_max_requests_and_equals_static(model) -> None:
    """Six answers of different lengths through two slots: a finished answer's slot takes the
    next waiting one, and every answer is the static engine's."""
    rows, limits = prompts(6), [2, 17, 5, 9, 3, 12]
    cfg = GenerationConfig(max_new_tokens=17, max_requests=2, temperature=0.8, seed=11)
    in_flight: list[int] = []
    generator = dynamic.dynamic_generator(model, cfg, VOCAB, 64)
    original = generator.engine.step_modern

    def counting_step():
        context = generator.context
        in_flight.append(context.total_request_count - context.paused_request_count)
        return original()

    generator.engine.step_modern = counting_step
    try:
        got = generate_ids(model, rows, cfg, VOCAB, STOPS, limits=limits)
    finally:
        generator.engine.step_modern = original
    static = generate_ids(model, rows, dataclasses.replace(cfg, engine="static"), VOCAB, STOPS,
                          limits=limits)  # fmt: skip
    assert got == static
    assert [len(a) <= n for a, n in zip(got, limits)] == [True] * 6
    assert max(in_flight) == 2
    # 48 tokens in 2 slots: about 24 steps plus prefills, far fewer than one row at a time
    assert len(in_flight) < sum(limits)


def test_the_engine_is_kept_on_the_model_and_rebuilt_for_longer_sequences(model) -> None:
    cfg = GenerationConfig(max_new_tokens=8)
    first = generate_ids(model, prompts(3), cfg, VOCAB, STOPS)
    engine = getattr(model, dynamic._CACHE_ATTR)
    assert generate_ids(model, prompts(3), cfg, VOCAB, STOPS) == first
    assert getattr(model, dynamic._CACHE_ATTR) is engine
    generate_ids(model, [list(range(3, 300))], cfg, VOCAB, STOPS)  # 305 > one 256-token block
    rebuilt = getattr(model, dynamic._CACHE_ATTR)
    assert rebuilt is not engine and rebuilt.shape.max_sequence_length == 512
    dynamic.close(model)  # what the RS generate phase does before the reward model loads
    assert getattr(model, dynamic._CACHE_ATTR) is None
    assert generate_ids(model, prompts(3), cfg, VOCAB, STOPS) == first  # built anew


def test_megatron_inference_flag_is_off_outside_a_run(model) -> None:
    from megatron.core.inference.utils import InferenceMode

    generate_ids(model, prompts(2), GenerationConfig(max_new_tokens=4), VOCAB, STOPS)
    assert not InferenceMode.is_active()


def test_concurrency_follows_the_kv_budget(model) -> None:
    per_token = kv_budget.kv_bytes_per_token(model)
    assert per_token == 2 * 2 * 4 * 16 * 4  # K and V x 2 layers x 4 heads x 16 x fp32
    cfg = GenerationConfig(kv_cache_gb=64 * 256 * per_token / 1024**3)  # 64 blocks
    shape = kv_budget.engine_shape(model, cfg, 300)  # 512 tokens: 2 blocks per answer
    assert (shape.max_sequence_length, shape.max_requests) == (512, 31)  # (64 - 1) // 2
    assert kv_budget.engine_shape(model, cfg, 200).max_requests == 63
    capped = kv_budget.engine_shape(model, dataclasses.replace(cfg, max_requests=5), 200)
    assert capped.max_requests == 5
    assert capped.kv_bytes == (5 * 4 + 1) * 64 * per_token  # the pool cut to what 5 need
    huge = kv_budget.engine_shape(model, GenerationConfig(kv_cache_gb=64.0), 200)
    assert huge.max_requests == kv_budget.REQUEST_CAP


def test_a_kv_budget_too_small_names_the_setting(model) -> None:
    cfg = GenerationConfig(kv_cache_gb=1e-6)
    with pytest.raises(ValueError, match="generation.kv_cache_gb"):
        kv_budget.engine_shape(model, cfg, 100)


def test_cuda_graphs_without_a_gpu_is_an_error(model) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="generation.cuda_graphs=true needs a GPU"):
        kv_budget.engine_shape(model, GenerationConfig(cuda_graphs=True), 100)
    assert not kv_budget.engine_shape(model, GenerationConfig(), 100).cuda_graphs


def test_a_too_long_request_is_refused_before_the_engine_runs(model) -> None:
    cfg = GenerationConfig(max_new_tokens=100)
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings=1024"):
        generate_ids(model, [list(range(3, 1000))], cfg, VOCAB, STOPS)
    with pytest.raises(ValueError, match="limits needs 2 values"):
        generate_ids(model, prompts(2), cfg, VOCAB, STOPS, limits=[3])
