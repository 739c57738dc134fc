"""The `hf` chat template (megatron_chimed/data/hf_template.py): the tokenizer's own jinja
chat_template, with a loss mask that covers exactly the assistant's tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_chimed.data.sft.encode import Encoder, EncodeStats
from megatron_chimed.data.template import DOCTOR_INSTRUCTION, get_template
from megatron_chimed.fast_tokenizer import FastTokenizer
from megatron_chimed.testing.tiny_fast_tokenizer import CHATML

Q1, A1, Q2, A2 = "头痛怎么办？", "建议休息，多喝水。", "需要吃药吗？", "症状重时可服用布洛芬。"
DIALOGUE = [
    {"role": "user", "content": Q1},
    {"role": "assistant", "content": A1},
    {"role": "user", "content": Q2},
    {"role": "assistant", "content": A2},
]


@pytest.fixture(scope="module")
def tok(tiny_chatml: Path) -> FastTokenizer:
    return FastTokenizer(tiny_chatml)


def with_template(src: Path, dst: Path, template: str) -> FastTokenizer:
    folder = Path(shutil.copytree(src, dst))
    (folder / "chat_template.jinja").write_text(template)  # wins over tokenizer_config.json
    return FastTokenizer(folder)


def runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """The maximal stretches of trained ids."""
    out: list[list[int]] = []
    for k, (idx, m) in enumerate(zip(ids, mask)):
        if m and (k == 0 or not mask[k - 1]):
            out.append([])
        if m:
            out[-1].append(idx)
    return out


def test_two_turns_train_exactly_the_assistant_contents(tok: FastTokenizer) -> None:
    ids, mask = get_template("hf").encode_dialogue(tok, DIALOGUE)
    im_end = tok.token_to_id("<|im_end|>")
    trained = runs(ids, mask)
    assert [tok.decode(run) for run in trained] == [A1, A2]
    assert [run[-1] for run in trained] == [im_end, im_end]  # each ends with its end of turn
    assert [tok.decode(run, skip_special=False) for run in trained] == [
        f"{A1}<|im_end|>",
        f"{A2}<|im_end|>",
    ]
    # One `<s>` first (the template's own is not doubled), then the rendering, untrained.
    assert ids[0] == tok.bos and ids.count(tok.bos) == 1 and mask[0] == 0
    text = tok.decode(ids, skip_special=False)
    assert text == (
        f"<s><|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n{A1}<|im_end|>\n"
        f"<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n{A2}<|im_end|>"
    )


def test_history_untrained_and_instruction_first(tok: FastTokenizer) -> None:
    template = get_template("hf")
    ids, mask = template.encode_dialogue(tok, DIALOGUE, DOCTOR_INSTRUCTION, train_history=False)
    assert [tok.decode(run) for run in runs(ids, mask)] == [A2]
    assert f"user\n{DOCTOR_INSTRUCTION}\n\n{Q1}<|im_end|>" in tok.decode(ids, skip_special=False)
    # The SFT encoder cuts whole exchanges and still trains only the last answer.
    record = {"messages": DIALOGUE, "source": "s"}
    kept = Encoder(template, tok, budget=len(ids) - 1)(record, DOCTOR_INSTRUCTION, EncodeStats())
    assert kept is not None
    assert [tok.decode(run) for run in runs(*kept)] == [A2]
    # The instruction moves to the first question left, as with the ziya template.
    assert tok.decode(kept[0]).startswith(f"user\n{DOCTOR_INSTRUCTION}\n\n{Q2}")


def test_ids_are_transformers_apply_chat_template(tok: FastTokenizer, tiny_chatml: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(tiny_chatml, local_files_only=True)
    template = get_template("hf")
    prompt = hf.apply_chat_template(DIALOGUE[:3], add_generation_prompt=True)["input_ids"]
    assert template.encode_prompt(tok, DIALOGUE[:3]) == prompt
    whole = hf.apply_chat_template(DIALOGUE)["input_ids"]
    ids, _ = template.encode_dialogue(tok, DIALOGUE)
    # The newline after the last `<|im_end|>` is never trained, and packing starts the next
    # sample with `<s>`: it is the only difference.
    assert whole == ids + tok.encode("\n")


def test_stop_tokens_are_eos_and_end_of_turn(tok: FastTokenizer) -> None:
    template = get_template("hf")
    assert template.stop_token_ids(tok) == [tok.eos, tok.token_to_id("<|im_end|>")]
    assert template.stop_strings == ()


def test_template_rendering_earlier_turns_differently_is_refused(
    tiny_chatml: Path, tmp_path: Path
) -> None:
    # The header counts the turns, so rendering the first 3 messages is not a prefix of
    # rendering all 4: no cut gives the assistant's tokens.
    counting = "{{ messages | length }} turns\n" + CHATML
    tok = with_template(tiny_chatml, tmp_path / "tok", counting)
    with pytest.raises(ValueError, match=r"rendering the first 1 messages .*is not a prefix"):
        get_template("hf").encode_dialogue(tok, DIALOGUE)


@pytest.mark.parametrize(
    ("template", "error"),
    [
        (
            CHATML.replace("'<|im_end|>'", "'.'"),
            r"has no special end-of-turn token after its text",
        ),
        (
            CHATML.replace("message['content']", "message['content'] | upper"),
            r"the rendering changes the text of assistant message 1",
        ),
        (
            "{{ raise_exception('roles must alternate') }}",
            r"chat template 'hf': .*roles must alternate",
        ),
    ],
)
def test_templates_without_a_clean_cut_are_refused(
    tiny_chatml: Path, tmp_path: Path, template: str, error: str
) -> None:
    tok = with_template(tiny_chatml, tmp_path / "tok", template)
    dialogue = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "abc"}]
    with pytest.raises(ValueError, match=error):
        get_template("hf").encode_dialogue(tok, dialogue)


def test_no_chat_template_is_one_clear_error(tiny_chatml: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_chatml, tmp_path / "tok"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tok has no chat_template \(chat_template\.jinja or"):
        get_template("hf").encode_prompt(FastTokenizer(folder), DIALOGUE[:1])
