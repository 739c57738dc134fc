"""ChiMed QA and MC next-utterance readers, prompts, and BLEU/ROUGE scoring of a task."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from megatron_chimed.eval.errors import DataFormatError
from megatron_chimed.eval.open_qa import (
    TextGenerationTask,
    clean_generation,
    read_chimed_qa,
    read_mc_dialogues,
)


def write_jsonl(path, records):
    path.write_text(
        "\ufeff" + "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n",
        encoding="utf-8",
    )
    return path


def answer(text, recommended=False, adopted=False):
    return {"text": text, "recommended": recommended, "adopted": adopted}


def test_chimed_reference_is_recommended_then_adopted(tmp_path):
    path = write_jsonl(
        tmp_path / "chimed.jsonl",
        [
            {
                "id": "a",
                "question": "饭后胃胀怎么办",
                "answers": [answer("吃药", adopted=True), answer("少食多餐", recommended=True)],
            },
            {
                "id": "b",
                "question": "头痛",
                "answers": [answer("休息"), answer("就医", adopted=True)],
            },
            {"id": "c", "question": "咳嗽", "answers": [answer("多喝水")]},
        ],
    )
    items, skipped = read_chimed_qa(path)
    assert [(i.item_id, i.reference) for i in items] == [("a", "少食多餐"), ("b", "就医")]
    assert skipped == 1


DIALOGUE = {
    "id": "00123",
    "content": [
        {"speaker": "患者", "utterance": "我今天有点头晕,一直咳嗽。"},
        {"speaker": "医生", "utterance": "发烧了吗?"},
        {"speaker": "患者", "utterance": "体温37.9度"},
        {"speaker": "医生", "utterance": "一直咳嗽多久? 有没有痰?"},
        {"speaker": "医生", "utterance": "建议查血常规"},
    ],
}


def test_mc_history_lines_as_in_paper_table_9(tmp_path):
    path = tmp_path / "mc.json"
    path.write_text(json.dumps([DIALOGUE], ensure_ascii=False), encoding="utf-8")
    (last,) = read_mc_dialogues(path, turns="last")
    assert last.prompt_body == "P: 我今天有点头晕,一直咳嗽。\nD: 发烧了吗?\nP: 体温37.9度"
    assert last.reference == "一直咳嗽多久? 有没有痰?"
    every = read_mc_dialogues(path, turns="all")
    assert [i.reference for i in every] == ["发烧了吗?", "一直咳嗽多久? 有没有痰?"]


def test_mc_bad_turn_names_line_and_field(tmp_path):
    broken = {"id": "1", "content": [{"speaker": "患者"}]}
    path = write_jsonl(tmp_path / "mc.jsonl", [DIALOGUE, broken])
    with pytest.raises(DataFormatError, match=r"mc\.jsonl: line 2: content\[0\]"):
        read_mc_dialogues(path)


def test_clean_generation_stops_at_the_next_turn():
    assert clean_generation(" 多久了?\nP: 三天\nD: 好") == "多久了?"


class ReferenceModel:
    """Returns the reference for the first prompt and a half-right answer for the second."""

    def generate(self, prompts, max_new_tokens, seed):
        return ["少食多餐\nP: 好的", "就诊"][: len(prompts)]


def test_task_scores_outputs_against_references(tmp_path):
    path = write_jsonl(
        tmp_path / "chimed.jsonl",
        [
            {
                "id": "a",
                "question": "饭后胃胀怎么办",
                "answers": [answer("少食多餐", recommended=True)],
            },
            {"id": "b", "question": "头痛", "answers": [answer("就医", recommended=True)]},
        ],
    )
    task = TextGenerationTask(OmegaConf.create({"kind": "chimed_qa", "data_file": str(path)}))
    assert task.prompts[0] == "假设你是一名医生，请回答患者的问题。\n\n饭后胃胀怎么办"
    result = task.run(ReferenceModel(), seed=0)
    # pair 1 exact; pair 2 "就诊" vs "就医": 1 of 2 characters, 0 of 1 bigram
    assert result["metrics"]["rouge1"] == pytest.approx((100 + 50) / 2)
    assert result["metrics"]["rouge2"] == pytest.approx((100 + 0) / 2)
    assert result["metrics"]["bleu1"] == pytest.approx(100 * 5 / 6)  # 5 of 6 unigrams, no BP
    assert task.meta()["tokenisation"].startswith("sacrebleu zh")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"question": "q", "answers": []}\n"just a string"\n', "line 2"),
        ('[{"question": "q", "answers": []}, 3]', "element 2 of the array"),
    ],
)
def test_non_object_records_name_line_or_element(tmp_path, text, where):
    path = tmp_path / "qa.jsonl"
    path.write_text(text, encoding="utf-8")
    for read in (read_chimed_qa, read_mc_dialogues):
        with pytest.raises(DataFormatError, match=rf"qa\.jsonl: {where}: expected a JSON object"):
            read(path)


def test_patient_speaker_with_stray_whitespace_stays_the_patient(tmp_path):
    turns = [("患者 ", "头晕"), ("医生", "量血压"), ("\t患者", "150/95"), ("医生", "建议就诊")]
    record = {"content": [{"speaker": s, "utterance": u} for s, u in turns]}
    path = write_jsonl(tmp_path / "mc.jsonl", [record])
    (item,) = read_mc_dialogues(path)
    assert item.prompt_body == "P: 头晕\nD: 量血压\nP: 150/95"
