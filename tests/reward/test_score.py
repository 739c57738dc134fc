"""Scoring batched by length (reward/score.py, reward/batch.py `length_batches`): the same
scores, in input order, as one answer at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.reward.batch import length_batches


def test_length_batches_sort_by_length_and_respect_both_budgets() -> None:
    lengths = [5, 40, 7, 40, 12, 3, 30]
    batches = length_batches(lengths, max_rows=3, max_tokens=90)
    assert sorted(i for b in batches for i in b) == list(range(7))  # every index once
    assert batches == [[1, 3], [6, 4, 2], [0, 5]]  # 2x40, 3x30, 2x5 (longest first)
    for batch in batches:
        assert len(batch) <= 3 and len(batch) * max(lengths[i] for i in batch) <= 90
    assert length_batches([100, 2], max_rows=4, max_tokens=50) == [[0], [1]]  # alone if over


@pytest.fixture(scope="module")
def reward_model():
    from megatron_chimed.model import ParallelConfig
    from megatron_chimed.platform import destroy, initialize
    from megatron_chimed.reward.model import build_reward_model
    from megatron_chimed.testing.tiny_ziya import TINY

    initialize(tensor_parallel=1, seed=3)
    yield build_reward_model(TINY, ParallelConfig(tensor_model_parallel_size=1), "fp32").eval()
    destroy()


def test_batched_scores_equal_one_at_a_time_in_input_order(reward_model, tiny_ziya: Path) -> None:
    from megatron_chimed.data.template import get_template
    from megatron_chimed.reward.score import score_texts
    from megatron_chimed.tokenizer import ZiyaTokenizer

    tokenizer = ZiyaTokenizer(tiny_ziya)
    answers = ["好", "多喝水，注意休息。" * 6, "去医院", "头痛可能是感冒引起的。" * 3, "不知道", ""]
    texts = [(f"问题{i}：头痛怎么办？", a) for i, a in enumerate(answers)]
    template = get_template("ziya")
    alone = score_texts(reward_model, tokenizer, texts, template, 256, batch_size=1)
    batched = score_texts(
        reward_model, tokenizer, texts, template, 256, batch_size=4, batch_tokens=200
    )
    assert len(set(alone)) == len(texts)  # distinct scores: a reordering would show
    assert batched == pytest.approx(alone, abs=1e-5)
