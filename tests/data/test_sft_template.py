"""The chat template (megatron_chimed/data/template.py): ids, loss mask, prompts, stop tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.data.template import DOCTOR_INSTRUCTION, get_template
from megatron_chimed.tokenizer import ZiyaTokenizer, load_tokenizer

Q1, A1, Q2, A2 = "头痛怎么办？", "建议休息，多喝水。", "需要吃药吗？", "症状重时可服用布洛芬。"
DIALOGUE = [
    {"role": "user", "content": Q1},
    {"role": "assistant", "content": A1},
    {"role": "user", "content": Q2},
    {"role": "assistant", "content": A2},
]


@pytest.fixture(scope="module")
def tok(tiny_ziya: Path) -> ZiyaTokenizer:
    return ZiyaTokenizer(tiny_ziya)


def test_single_turn_ids_and_mask(tok: ZiyaTokenizer) -> None:
    ids, mask = get_template("ziya").encode_dialogue(tok, DIALOGUE[:2])
    prompt = tok.encode(f"<human>:{Q1}\n<bot>:")
    response = tok.encode(A1)
    assert ids == [tok.bos, *prompt, *response, tok.eos]
    assert prompt[0] == tok.human and tok.bot in prompt
    assert mask == [0] * (1 + len(prompt)) + [1] * (len(response) + 1)
    # `</s>` is a target (the model must learn to stop); the trained tokens decode to A1.
    assert ids[-1] == tok.eos and mask[-1] == 1
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == A1


def test_multi_turn_concatenates_without_separator(tok: ZiyaTokenizer) -> None:
    template = get_template("ziya")
    ids, mask = template.encode_dialogue(tok, DIALOGUE)
    first_eos = ids.index(tok.eos)
    assert ids[first_eos + 1] == tok.human  # `</s><human>`: no newline, no second `<s>`
    assert ids.count(tok.bos) == 1 and ids.count(tok.eos) == 2
    trained = [i for i, m in zip(ids, mask) if m]
    assert trained == [*tok.encode(A1), tok.eos, *tok.encode(A2), tok.eos]

    last_only_ids, last_only = template.encode_dialogue(tok, DIALOGUE, train_history=False)
    assert last_only_ids == ids
    assert [i for i, m in zip(ids, last_only) if m] == [*tok.encode(A2), tok.eos]


def test_instruction_prefix_goes_on_the_first_question_only(tok: ZiyaTokenizer) -> None:
    ids, _ = get_template("ziya").encode_dialogue(tok, DIALOGUE, DOCTOR_INSTRUCTION)
    text = tok.decode(ids, skip_special=False)
    assert text.startswith(f"<human>:{DOCTOR_INSTRUCTION}\n\n{Q1}\n<bot>:")
    assert text.count(DOCTOR_INSTRUCTION) == 1
    assert f"<human>:{Q2}\n<bot>:" in text


def test_generation_prompt_is_the_training_prefix(tok: ZiyaTokenizer) -> None:
    """What generation feeds the model is exactly what SFT trained before the last answer."""
    template = get_template("ziya")
    prompt = template.encode_prompt(tok, DIALOGUE[:3], DOCTOR_INSTRUCTION)
    ids, mask = template.encode_dialogue(tok, DIALOGUE, DOCTOR_INSTRUCTION)
    assert ids[: len(prompt)] == prompt
    assert ids[len(prompt) :] == [*tok.encode(A2), tok.eos]
    assert prompt[-2:] == tok.encode("<bot>:")
    assert mask[len(prompt) - 1] == 0 and mask[len(prompt)] == 1


def test_brackets_variant_is_plain_text(tok: ZiyaTokenizer) -> None:
    template = get_template("ziya_brackets")
    ids, mask = template.encode_dialogue(tok, DIALOGUE[:2])
    assert tok.human not in ids and tok.bot not in ids
    assert tok.decode(ids).startswith(f"[human]:{Q1}\n[bot]:")
    assert [i for i, m in zip(ids, mask) if m] == [*tok.encode(A1), tok.eos]


def test_stop_tokens(tok: ZiyaTokenizer) -> None:
    assert get_template("ziya").stop_token_ids(tok) == [tok.eos, tok.human]
    assert get_template("ziya").stop_strings == ("<human>:",)
    assert get_template("ziya_brackets").stop_token_ids(tok) == [tok.eos]
    assert get_template("ziya_brackets").stop_strings == ("[human]:",)


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([{"role": "assistant", "content": A1}], "message 0: role 'assistant'"),
        ([DIALOGUE[0], DIALOGUE[2]], "message 1: role 'user', expected 'assistant'"),
        ([{"role": "user", "content": 3}, DIALOGUE[1]], "message 0: content"),
        (DIALOGUE[:3], "must end with an assistant message"),
    ],
)
def test_bad_dialogues(tok: ZiyaTokenizer, messages: list, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        get_template("ziya").encode_dialogue(tok, messages)


def test_prompt_must_end_with_user_and_names_are_checked(tok: ZiyaTokenizer) -> None:
    with pytest.raises(ValueError, match="must end with a user message"):
        get_template("ziya").encode_prompt(tok, DIALOGUE)
    with pytest.raises(ValueError, match="'chatml'.*ziya"):
        get_template("chatml")


def test_ziya_needs_human_and_bot_tokens(tiny_chatml: Path) -> None:
    other = load_tokenizer(tiny_chatml)  # a BPE without <human> / <bot>
    with pytest.raises(ValueError, match=r"'ziya': .*chatml has no <human> / <bot> tokens"):
        get_template("ziya").encode_dialogue(other, DIALOGUE[:2])
    # Raw-text prompts only need the stop ids: `</s>` alone, as the tags are not tokens.
    assert get_template("ziya").stop_token_ids(other) == [other.eos]
    # The plain-text variant works with any tokenizer.
    ids, mask = get_template("ziya_brackets").encode_dialogue(other, DIALOGUE[:2])
    assert other.decode([i for i, m in zip(ids, mask) if m]) == A1
