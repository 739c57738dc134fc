"""Reward data: readers, pairing modes, batches, loss and metrics (no model, no processes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from megatron_chimed.data.jsonio import DataError
from megatron_chimed.data.template import get_template
from megatron_chimed.reward.batch import (
    RankedExample,
    encode_records,
    example_tensors,
    make_example,
    make_pairs,
    stack_batch,
)
from megatron_chimed.reward.data import (
    DuplicateResponse,
    RankedRecord,
    RewardDataConfig,
    read_ranked_jsonl,
)
from megatron_chimed.reward.loss import PAIR_ACCURACY, RANKING_ACCURACY, pairwise_loss
from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA
from megatron_chimed.tokenizer import ZiyaTokenizer

PAPER_ORDER = ["response_chosen", "response_gpt4", "response_gpt35", "response_rejected"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("adjacent", [(0, 1), (1, 2), (2, 3)]),
        ("all", [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]),
        ("binary", [(0, 3)]),
    ],
)
def test_pairs_of_a_four_response_record(mode: str, expected: list) -> None:
    assert make_pairs(mode, 4) == expected


def test_unknown_pairing_is_named() -> None:
    with pytest.raises(ValueError, match="pairing='pairs'"):
        make_pairs("pairs", 4)


def test_bundled_sample_reads_in_the_papers_rank_order() -> None:
    records, skipped = read_ranked_jsonl(
        SAMPLE_DATA / "reward/train.jsonl", RewardDataConfig(rank_order=PAPER_ORDER)
    )
    first = json.loads((SAMPLE_DATA / "reward/train.jsonl").read_text("utf-8").splitlines()[0])
    assert (len(records), skipped) == (60, 0)
    assert records[0].prompt == first["question"]
    assert records[0].responses == tuple(first[name] for name in PAPER_ORDER)


def test_cmd_reward_default_is_chosen_over_rejected(tmp_path: Path) -> None:
    row = {"question": "q", "response_chosen": "good", "response_rejected": "bad"}
    records, _ = read_ranked_jsonl(write_jsonl(tmp_path / "r.json", [row]), RewardDataConfig())
    assert records == [RankedRecord("q", ("good", "bad"))]


def test_ordered_list_form(tmp_path: Path) -> None:
    cfg = RewardDataConfig(responses_field="responses", prompt_field="prompt")
    rows = [{"prompt": "p", "responses": ["a", "b", "c"]}]
    records, _ = read_ranked_jsonl(write_jsonl(tmp_path / "r.jsonl", rows), cfg)
    assert records == [RankedRecord("p", ("a", "b", "c"))]


ROWS = [
    {"question": "q1", "response_chosen": "a", "response_rejected": "b"},
    {"question": "q2", "response_chosen": "  ", "response_rejected": "b"},
    {"question": "q3", "response_rejected": "b"},
    {"question": "q4", "response_chosen": "a", "response_rejected": "b"},
]


def test_missing_or_empty_response_is_an_error_naming_file_line_and_field(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", ROWS)
    with pytest.raises(DataError, match=rf"{path}:2: field 'response_chosen': missing or empty"):
        read_ranked_jsonl(path, RewardDataConfig())


def test_missing_responses_are_skipped_and_counted_when_configured(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", ROWS)
    records, skipped = read_ranked_jsonl(path, RewardDataConfig(on_missing="skip"))
    assert [r.prompt for r in records] == ["q1", "q4"]
    assert skipped == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q", "response_chosen": 3, "response_rejected": "b"}', "expected str"),
        ('{"question": "q",', "not valid JSON"),
        ('["q", "a", "b"]', "expected a JSON object"),
    ],
)
def test_malformed_records_are_errors_even_when_skipping(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=f"{path}:1: .*{message}"):
        read_ranked_jsonl(path, RewardDataConfig(on_missing="skip"))


def test_bad_config_values_are_named() -> None:
    with pytest.raises(ValueError, match="on_missing"):
        RewardDataConfig(on_missing="ignore")
    with pytest.raises(ValueError, match="rank_order"):
        RewardDataConfig(rank_order=["response_chosen"])


DUPLICATES = [
    {"question": "q1", "response_chosen": "a", "response_rejected": "b"},
    {"question": "q2", "response_chosen": "same", "response_rejected": " same\n"},
    {"question": "q3", "response_chosen": "c", "response_rejected": "d"},
]


def test_identical_chosen_and_rejected_is_an_error_naming_file_line_and_field(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", DUPLICATES)
    with pytest.raises(
        DuplicateResponse,
        match=rf"^{path}:2: field 'response_rejected': the same response as 'response_chosen'",
    ):
        read_ranked_jsonl(path, RewardDataConfig())


def test_identical_responses_are_skipped_and_counted_when_configured(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", DUPLICATES)
    records, skipped = read_ranked_jsonl(path, RewardDataConfig(on_duplicate="skip"))
    assert [r.prompt for r in records] == ["q1", "q3"] and skipped == 1
    # on_missing does not cover repeats: each kind of skip is asked for by its own key.
    with pytest.raises(DuplicateResponse):
        read_ranked_jsonl(path, RewardDataConfig(on_missing="skip"))


def test_a_repeated_answer_in_a_ranked_list_names_its_index(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "responses": ["a", "b", "a", "c"]}]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    cfg = RewardDataConfig(responses_field="responses", prompt_field="prompt")
    with pytest.raises(
        DuplicateResponse, match=rf"^{path}:1: field 'responses\[2\]': .* as 'responses\[0\]'"
    ):
        read_ranked_jsonl(path, cfg)


def test_a_rank_order_naming_a_field_twice_or_the_prompt_is_refused() -> None:
    with pytest.raises(ValueError, match="field 'response_chosen' is named twice"):
        RewardDataConfig(rank_order=["response_chosen", "response_gpt4", "response_chosen"])
    with pytest.raises(ValueError, match="'question' is the prompt_field"):
        RewardDataConfig(rank_order=["response_chosen", "question"])
    with pytest.raises(ValueError, match="on_duplicate"):
        RewardDataConfig(on_duplicate="keep")


@pytest.fixture(scope="module")
def tokenizer(tiny_ziya: Path) -> ZiyaTokenizer:
    return ZiyaTokenizer(tiny_ziya)


RECORD = RankedRecord("头痛怎么办？", ("多休息，必要时就医。", "吃点药。", "不知道。", "忍着。"))


@pytest.mark.parametrize(
    ("mode", "forwards", "pairs"),
    [
        ("adjacent", 4, ((0, 1), (1, 2), (2, 3))),
        ("binary", 2, ((0, 1),)),
    ],
)
def test_example_holds_each_needed_response_once(
    tokenizer: ZiyaTokenizer, mode: str, forwards: int, pairs: tuple
) -> None:
    example, cut = make_example(RECORD, get_template("ziya"), tokenizer, 256, mode)
    assert not cut
    assert len(example.sequences) == forwards and example.pairs == pairs
    first = example.sequences[0]
    assert first[0] == tokenizer.bos and first[-1] == tokenizer.eos
    assert tokenizer.decode(list(first), skip_special=False).startswith("<human>:头痛怎么办？")
    assert tokenizer.decode(list(example.sequences[-1])).endswith(RECORD.responses[-1])


def test_too_long_sequences_keep_bos_and_their_end(tokenizer: ZiyaTokenizer) -> None:
    full, _ = make_example(RECORD, get_template("ziya"), tokenizer, 256, "binary")
    cut, was_cut = make_example(RECORD, get_template("ziya"), tokenizer, 8, "binary")
    assert was_cut
    for long, short in zip(full.sequences, cut.sequences):
        assert len(short) == 8 and short[0] == tokenizer.bos and short[1:] == long[-7:]


def test_pairs_that_become_the_same_tokens_are_refused_or_dropped(
    tokenizer: ZiyaTokenizer,
) -> None:
    template = get_template("ziya")
    # Different answers with the same ending: cut to 6 tokens from the left they are equal.
    same_end = RankedRecord(
        "问", ("甲" + "多喝水" * 8, "乙" + "多喝水" * 8), "r.jsonl:7", ("a", "b")
    )
    with pytest.raises(DuplicateResponse, match=r"^r.jsonl:7: field 'b': the same tokens as 'a'"):
        make_example(same_end, template, tokenizer, 6, "adjacent")
    kept = encode_records([RECORD, same_end], template, tokenizer, 6, "binary", on_duplicate="skip")
    assert len(kept) == 1
    # Records made by hand go through the reader's check too.
    with pytest.raises(DuplicateResponse, match="field 'responses\\[1\\]'"):
        make_example(RankedRecord("问", ("好", "好")), template, tokenizer, 256, "binary")


EXAMPLES = [
    RankedExample(((5, 6, 7), (5, 8), (5, 9, 9, 9)), ((0, 1), (1, 2))),
    RankedExample(((4, 4), (3,), (2, 2)), ((0, 1), (0, 2))),
]


def test_a_micro_batch_holds_every_response_once_and_the_pairs_into_them() -> None:
    items = [example_tensors(example, 6, pad_id=0) for example in EXAMPLES]
    assert items[0]["tokens"].tolist()[1] == [5, 8, 0, 0, 0, 0]  # right-padded to seq_length
    batch = stack_batch(torch.utils.data.default_collate(items))  # as the loop's loader does
    assert batch.tokens.tolist() == [
        [5, 6, 7, 0],
        [5, 8, 0, 0],
        [5, 9, 9, 9],
        [4, 4, 0, 0],
        [3, 0, 0, 0],
        [2, 2, 0, 0],
    ]  # cut to the longest sequence
    assert batch.last_index.tolist() == [2, 1, 3, 1, 0, 1]
    assert batch.pairs.tolist() == [[0, 1], [1, 2], [3, 4], [3, 5]]  # prompt 2 starts at row 3
    assert batch.group_sizes == [3, 3]
    assert batch.position_ids.tolist()[4] == [0, 1, 2, 3]


def test_sequence_parallel_batches_are_cut_to_a_multiple_of_tp() -> None:
    # Sequence parallelism splits the sequence evenly over the TP ranks.
    items = [example_tensors(example, 6, pad_id=0) for example in EXAMPLES]
    assert stack_batch(torch.utils.data.default_collate(items), multiple=2).tokens.shape == (6, 4)
    odd = torch.utils.data.default_collate([example_tensors(EXAMPLES[1], 6, pad_id=0)])
    odd["lengths"][0, 0] = 3  # the longest answer now has 3 tokens
    assert stack_batch(odd).tokens.shape == (3, 3)
    assert stack_batch(odd, multiple=2).tokens.shape == (3, 4)
    assert stack_batch(odd, multiple=8).tokens.shape == (3, 6)  # never wider than the sample


def test_loss_and_metrics_by_hand() -> None:
    scores = torch.tensor([3.0, 1.0, 2.0, 0.5, 1.5])  # prompt 1 misorders 1 vs 2; prompt 2 wrong
    pairs = torch.tensor([[0, 1], [1, 2], [3, 4]])
    loss_sum, count, report = pairwise_loss(scores, pairs, [3, 2])
    expected = -sum(math.log(1 / (1 + math.exp(-d))) for d in (2.0, -1.0, -1.0))
    assert loss_sum.item() == pytest.approx(expected)
    assert count.item() == 3
    assert report[PAIR_ACCURACY].tolist() == [1.0, 3.0]
    assert report[RANKING_ACCURACY].tolist() == [0.0, 2.0]
    margin_sum, _, _ = pairwise_loss(scores, pairs, [3, 2], margin=1.0)
    with_margin = -sum(math.log(1 / (1 + math.exp(-d))) for d in (1.0, -2.0, -2.0))
    assert margin_sum.item() == pytest.approx(with_margin)


def test_full_ranking_counts_only_prompts_in_perfect_order() -> None:
    scores = torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 2.0])
    _, _, report = pairwise_loss(scores, torch.tensor([[0, 3], [4, 5]]), [4, 2])
    assert report[RANKING_ACCURACY].tolist() == [1.0, 2.0]
