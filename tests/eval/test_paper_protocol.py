"""Protocol paper: the authors' scripts' prompts, sampling settings and answer extraction, and
the text-generation task run with it end to end on a scripted model."""

from __future__ import annotations

import json

import pytest

from megatron_chimed.config.load import load
from megatron_chimed.eval.open_qa import TextGenerationTask
from megatron_chimed.eval.paper_protocol import dialogue_prompt, extract_answer, qa_prompt
from megatron_chimed.eval.runner import run_eval

ROLES = ["<human>", "<bot>"]


def test_qa_prompt_is_generate_py_s():
    shots = [("头痛怎么办？", "多休息。"), ("发烧了", "多喝水。")]
    assert qa_prompt("  咳嗽 ", shots, ROLES) == (
        "<human>:头痛怎么办？\n<bot>:多休息。\n<human>:发烧了\n<bot>:多喝水。\n<human>:咳嗽\n<bot>:"
    )
    assert qa_prompt("咳嗽", [], ["[human]", "[bot]"]) == "[human]:咳嗽\n[bot]:"


def test_dialogue_prompt_is_multi_turn_generate_py_s():
    history = [("P", "我头痛"), ("P", "三天了"), ("D", "发烧吗？"), ("P", "不发烧")]
    expected = "<human>:我头痛\n三天了<bot>:发烧吗？<human>:不发烧<bot>:"
    assert dialogue_prompt(history, ROLES) == expected


def test_answer_is_the_text_after_the_last_bot_tag():
    assert extract_answer(" 多喝水。</s>", ROLES) == " 多喝水。"
    # the script splits the whole decoded text: a turn the model wrote itself wins
    assert extract_answer("多喝水。\n<human>:还要吃药吗\n<bot>: 不用。", ROLES) == "不用。"


class Scripted:
    """Answers every prompt with the same text; records how it was asked."""

    def __init__(self, answer: str = "建议多休息，多喝水。", settings=None) -> None:
        self.answer, self.settings, self.calls = answer, settings or {}, []

    def generate(self, prompts, max_new_tokens, seed):
        self.calls.append({"prompts": prompts, "max_new_tokens": max_new_tokens, **self.settings})
        return [self.answer for _ in prompts]

    def next_token_logprobs(self, prompts, candidates):
        raise AssertionError("not used")

    def with_sampling(self, temperature, top_p):
        sampled = Scripted(self.answer, {"temperature": temperature, "top_p": top_p})
        sampled.calls = self.calls
        return sampled


def test_chimed_qa_paper_protocol_end_to_end(tmp_path):
    cfg = load(["+eval=chimed_qa", "eval.protocol=paper", "eval.seeds=[0,1]"]).eval
    model = Scripted()
    result = run_eval(cfg, model, tmp_path)
    call = model.calls[0]
    # the script's settings: 512 new tokens, top-p 0.85 at temperature 1, no chat template
    assert (call["max_new_tokens"], call["temperature"], call["top_p"]) == (512, 1.0, 0.85)
    prompt = call["prompts"][0]
    assert prompt.startswith("<human>:男，40岁，最近一个月饭后总觉得胃胀")  # shot 1 of chimed_dev
    assert prompt.count("<human>:") == 6 and prompt.endswith("\n<bot>:")
    assert len(model.calls) == 2  # sampled: every seed runs
    assert result["meta"]["shots"] == 5 and result["meta"]["protocol"] == "paper"
    assert set(result["mean"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougeL"}
    lines = (tmp_path / "chimed_qa.predictions.jsonl").read_text("utf-8").splitlines()
    first = json.loads(lines[0])
    assert first["prompt"] == prompt and first["output"] == "建议多休息，多喝水。"
    assert first["reference"].startswith("您好")


def test_standard_protocol_is_unchanged_by_default():
    task = TextGenerationTask(load(["+eval=chimed_qa"]).eval)
    assert task.protocol == "standard" and task.max_new_tokens == 256
    assert (task.temperature, task.top_p) == (None, None)  # the model's own decoding
    assert task.prompts[0].startswith("假设你是一名医生，请回答患者的问题。\n\n")
    model = Scripted()
    task.run(model, seed=0)
    assert "temperature" not in model.calls[0]  # with_sampling was not asked


def test_dialogue_paper_protocol_prompts_the_history_without_shots():
    task = TextGenerationTask(load(["+eval=mc_dialogue", "eval.protocol=paper"]).eval)
    assert task.shots == 0 and task.max_new_tokens == 512
    for prompt, item in zip(task.prompts, task.items):
        assert prompt.startswith("<human>:") and prompt.endswith("<bot>:")
        assert item.history[-1][1] in prompt


def test_sampling_needs_a_model_that_can_be_told(tmp_path):
    class Fixed:
        def generate(self, prompts, max_new_tokens, seed):
            return ["好"] * len(prompts)

    task = TextGenerationTask(load(["+eval=chimed_qa", "eval.protocol=paper"]).eval)
    with pytest.raises(TypeError, match="Fixed cannot be told a temperature or top_p"):
        task.run(Fixed(), seed=0)
