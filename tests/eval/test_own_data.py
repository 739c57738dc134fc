"""Your own evaluation files: a multiple-choice JSONL (`format: jsonl`) and a question/answer
JSONL (`kind: qa_jsonl`), read with configurable field names and run through the tasks."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from megatron_chimed.config.load import ConfigError, load
from megatron_chimed.eval.errors import DataFormatError
from megatron_chimed.eval.multichoice import MultiChoiceTask
from megatron_chimed.eval.multichoice_data import read_mc_jsonl
from megatron_chimed.eval.open_qa import TextGenerationTask


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


class GoldLetterModel:
    """Log-prob 0 on the letter hidden as 金标<letter> in the scored question, -5 elsewhere;
    questions whose gold letter is in `wrong_for` get the last letter instead."""

    def __init__(self, wrong_for=""):
        self.wrong_for = set(wrong_for)

    def next_token_logprobs(self, prompts, candidates):
        rows = []
        for prompt in prompts:
            gold = prompt.rsplit("金标", 1)[1][0]
            pick = candidates[-1] if gold in self.wrong_for else gold
            rows.append([0.0 if c == pick else -5.0 for c in candidates])
        return rows


def own_mc(tmp_path, **extra):
    # Field names of the user's own choosing; answers as a letter or a 0-based index.
    rows = [
        {"stem": "金标A题", "choices": ["甲", "乙", "丙", "丁"], "gold": "A"},
        {"stem": "金标B题", "choices": ["甲", "乙", "丙", "丁"], "gold": 1},
        {"stem": "金标C题", "choices": ["甲", "乙", "丙", "丁"], "gold": "C"},
        {"stem": "金标D题", "choices": ["甲", "乙", "丙", "丁"], "gold": 3},
    ]
    shots = [{"stem": f"示例{i}", "choices": ["a", "b", "c", "d"], "gold": "A"} for i in range(3)]
    cfg = {
        "format": "jsonl",
        "data_file": str(write_jsonl(tmp_path / "exam.jsonl", rows)),
        "shot_file": str(write_jsonl(tmp_path / "shots.jsonl", shots)),
        "shots": 2,
        "question_field": "stem",
        "options_field": "choices",
        "answer_field": "gold",
        **extra,
    }
    return OmegaConf.create(cfg)


def test_own_mc_file_through_the_task(tmp_path):
    task = MultiChoiceTask(own_mc(tmp_path))
    assert [q.answer for q, _ in task.items] == ["A", "B", "C", "D"]
    prompt = task.items[0][1]
    assert prompt.startswith("以下是中国关于医学考试的单项选择题")
    assert prompt.count("答案：A\n\n") == 2  # the first two lines of shot_file
    assert prompt.endswith("金标A题\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案：")
    assert task.run(GoldLetterModel(), seed=0)["metrics"]["acc_micro"] == 100.0
    result = task.run(GoldLetterModel(wrong_for="B"), seed=0)
    assert result["metrics"] == {"acc/exam": 75.0, "acc_micro": 75.0, "acc_macro": 75.0}
    second = result["predictions"][1]
    assert (second["predicted"], second["reference"], second["correct"]) == ("D", "B", False)
    assert second["option_scores"] == {"A": -5.0, "B": -5.0, "C": -5.0, "D": 0.0}


def test_own_mc_zero_shot_and_per_letter_fields(tmp_path):
    rows = [
        {"question": "金标B题", "A": "x", "B": "y", "C": "z", "answer": "B"},
        {"question": "金标A题", "A": "x", "B": "y", "C": "z", "answer": "B"},  # model says A
    ]
    path = write_jsonl(tmp_path / "letters.jsonl", rows)
    cfg = {"format": "jsonl", "data_file": str(path), "shots": 0, "options_field": None}
    task = MultiChoiceTask(OmegaConf.create(cfg))
    assert task.items[0][0].options == {"A": "x", "B": "y", "C": "z"}
    assert "示例" not in task.items[0][1]
    assert task.run(GoldLetterModel(), seed=0)["metrics"]["acc_micro"] == 50.0


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"options": ["a", "b"], "answer": "A"}, "field 'question': missing (set question_field"),
        ({"question": "q", "answer": "A"}, "field 'options': missing (set options_field"),
        ({"question": "q", "options": ["a", "b"]}, "field 'answer': missing (set answer_field"),
        ({"question": "q", "options": ["a", "b"], "answer": "C"}, "'C' is neither a letter"),
        ({"question": "q", "options": ["a", "b"], "answer": 2}, "nor a 0-based index below 2"),
    ],
)
def test_own_mc_bad_line_is_one_error_naming_file_line_field(tmp_path, record, message):
    good = {"question": "q", "options": ["a", "b"], "answer": 0}
    path = write_jsonl(tmp_path / "mine.jsonl", [good, good, record])
    with pytest.raises(DataFormatError) as err:
        read_mc_jsonl(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert message in str(err.value)


def test_own_mc_shots_need_a_shot_file(tmp_path):
    with pytest.raises(ConfigError, match=r"'eval.shot_file': format jsonl needs it"):
        MultiChoiceTask(own_mc(tmp_path, shot_file=None))
    with pytest.raises(ConfigError, match=r"'eval.data_dir': format ceval needs it"):
        MultiChoiceTask(own_mc(tmp_path, format="ceval"))


class ScriptedWriter:
    """Answers the n-th prompt with the n-th scripted text."""

    def __init__(self, texts):
        self.texts = texts
        self.prompts = []

    def generate(self, prompts, max_new_tokens, seed):
        self.prompts += prompts
        return self.texts[: len(prompts)]


def test_own_qa_file_scored_with_bleu_and_rouge(tmp_path):
    rows = [{"ask": "口渴怎么办", "reply": "建议多喝温水"}, {"ask": "头痛", "reply": "就医"}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    cfg = {
        "kind": "qa_jsonl",
        "data_file": str(path),
        "question_field": "ask",
        "answer_field": "reply",
        "instruction": "",
    }
    task = TextGenerationTask(OmegaConf.create(cfg))
    model = ScriptedWriter(["建议多喝水", "就医"])
    result = task.run(model, seed=0)
    assert model.prompts == ["口渴怎么办", "头痛"]  # instruction "": the bare question
    # Pooled over both pairs: unigrams 7/7; bigrams 3/4 + 1/1; trigrams 2/3 + 0/0; 4-grams
    # 1/2 + 0/0; hypothesis 7 tokens, references 8.
    bp = math.exp(1 - 8 / 7)
    metrics = result["metrics"]
    assert metrics["bleu1"] == pytest.approx(100 * bp, abs=1e-6)
    assert metrics["bleu2"] == pytest.approx(100 * bp * math.sqrt(4 / 5), abs=1e-6)
    assert metrics["bleu4"] == pytest.approx(100 * bp * (4 / 5 * 2 / 3 * 1 / 2) ** 0.25, abs=1e-6)
    assert metrics["rouge1"] == pytest.approx(100 * (10 / 11 + 1) / 2)
    assert [p["reference"] for p in result["predictions"]] == ["建议多喝温水", "就医"]


def test_own_qa_missing_field_names_file_line_and_key(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "头痛", "answer": "就医"}, {"q": "x"}])
    cfg = OmegaConf.create({"kind": "qa_jsonl", "data_file": str(path)})
    with pytest.raises(
        DataFormatError, match=rf"^{path}:2: field 'question': missing \(set question_field"
    ):
        TextGenerationTask(cfg)


def test_bundled_examples_compose_and_read():
    mc = MultiChoiceTask(load(["+eval=my_mc"]).eval)
    assert len(mc.items) == 6 and mc.items[0][1].count("答案：") == 3  # 2 shots + the question
    qa = TextGenerationTask(load(["+eval=my_qa"]).eval)
    assert len(qa.items) == 5 and qa.prompts[0].startswith("假设你是一名医生")
