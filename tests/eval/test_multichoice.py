"""Multi-choice readers, official prompts, letter parsing, log-prob scoring and accuracy."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from megatron_chimed.eval.errors import DataFormatError
from megatron_chimed.eval.multichoice import (
    MultiChoiceTask,
    accuracy_table,
    build_prompt,
    parse_answer_letter,
)
from megatron_chimed.eval.multichoice_data import (
    MCQuestion,
    read_ceval_csv,
    read_cmmlu_csv,
    read_medqa_jsonl,
)

CEVAL_DEV = (
    "id,question,A,B,C,D,answer,explanation\n"
    '0,人体内含量最多的无机盐是____,钠,钾,钙,铁,C,"1. 钙主要存在于骨骼和牙齿中。\n'
    '2. 因此答案为C。"\n'
    "1,成人正常体温约为____,35℃,37℃,39℃,41℃,B,\n"
)


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_ceval_dev_layout_with_multiline_explanation_and_bom(tmp_path):
    path = write(tmp_path / "dev" / "basic_medicine_dev.csv", CEVAL_DEV, "utf-8-sig")
    rows = read_ceval_csv(path, "basic_medicine")
    assert [r.qid for r in rows] == ["0", "1"]
    assert rows[0].options == {"A": "钠", "B": "钾", "C": "钙", "D": "铁"}
    assert rows[0].answer == "C" and rows[1].answer == "B"


def test_ceval_val_and_test_layouts(tmp_path):
    val = write(tmp_path / "val.csv", "id,question,A,B,C,D,answer\n0,问____,a,b,c,d,D\n")
    test = write(tmp_path / "test.csv", "id,question,A,B,C,D\n0,问____,a,b,c,d\n")
    assert read_ceval_csv(val, "x")[0].answer == "D"
    assert read_ceval_csv(test, "x")[0].answer == ""


def test_ceval_bad_answer_names_file_row_line_and_field(tmp_path):
    path = write(tmp_path / "dev.csv", CEVAL_DEV.replace(",B,\n", ",E,\n"))
    with pytest.raises(DataFormatError, match=r"dev\.csv: row 2 \(line 4\): field 'answer'"):
        read_ceval_csv(path, "basic_medicine")


def test_cmmlu_unnamed_index_column(tmp_path):
    text = ",Question,A,B,C,D,Answer\n0,胰岛素由胰岛中的哪种细胞分泌？,α细胞,β细胞,δ细胞,PP细胞,B\n"
    rows = read_cmmlu_csv(write(tmp_path / "anatomy.csv", text), "anatomy")
    assert rows == [
        MCQuestion(
            "anatomy",
            "0",
            "胰岛素由胰岛中的哪种细胞分泌？",
            {"A": "α细胞", "B": "β细胞", "C": "δ细胞", "D": "PP细胞"},
            "B",
        )
    ]


def test_medqa_options_dict_and_answer_idx(tmp_path):
    options = {"B": "十二指肠溃疡", "A": "胃溃疡", "C": "c", "D": "d", "E": "e"}
    record = {
        "question": "最可能的诊断是",
        "options": options,
        "answer": "胃溃疡",
        "meta_info": "内科学",
        "answer_idx": "A",
    }
    path = write(tmp_path / "test.jsonl", json.dumps(record, ensure_ascii=False) + "\n\n")
    (row,) = read_medqa_jsonl(path)
    assert list(row.options) == ["A", "B", "C", "D", "E"] and row.answer == "A"
    bad = write(tmp_path / "bad.jsonl", json.dumps({**record, "answer_idx": "F"}) + "\n")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl: line 1: field 'answer_idx'"):
        read_medqa_jsonl(bad)


def q(question, answer, subject="s", letters="ABCD"):
    return MCQuestion(subject, question, question, {k: f"选项{k}" for k in letters}, answer)


def test_ceval_prompt_is_the_official_format():
    prompt = build_prompt(q("问题二", "B"), [q("问题一", "C")], "ceval", "基础医学")
    assert prompt == (
        "以下是中国关于基础医学考试的单项选择题，请选出其中的正确答案。\n\n"
        "问题一\nA. 选项A\nB. 选项B\nC. 选项C\nD. 选项D\n答案：C\n\n"
        "问题二\nA. 选项A\nB. 选项B\nC. 选项C\nD. 选项D\n答案："
    )


def test_cmmlu_prompt_is_the_official_format():
    prompt = build_prompt(q("问题二", "B"), [q("问题一", "C")], "cmmlu", "解剖学")
    assert prompt == (
        "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目：问题一\nA. 选项A\nB. 选项B\nC. 选项C\nD. 选项D\n答案是：C\n\n"
        "题目：问题二\nA. 选项A\nB. 选项B\nC. 选项C\nD. 选项D\n答案是："
    )


def test_medqa_prompt_lists_five_options():
    prompt = build_prompt(q("问", "E", letters="ABCDE"), [], "medqa", "医师资格")
    assert prompt.endswith("D. 选项D\nE. 选项E\n答案：")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        (" （C）钙", "C"),
        ("D. 铁", "D"),
        ("答案是A。", "A"),
        ("我选C", "C"),
        ("正确答案：B，因为…", "B"),
        ("根据题意，应为 D 项", "D"),
        ("可能是A也可能是B", None),
        ("不知道", None),
        ("E", None),
        ("CT检查", None),
        # The leading letter decides: few-shot continuations go on to list other options.
        ("B\n\n下一题\nA. 钠", "B"),
    ],
)
def test_parse_answer_letter(text, expected):
    assert parse_answer_letter(text, ("A", "B", "C", "D")) == expected


def test_accuracy_micro_and_macro_differ_on_unequal_subjects():
    metrics = accuracy_table({"a": [True, True, True, False], "b": [False, False]})
    assert metrics["acc/a"] == 75.0 and metrics["acc/b"] == 0.0
    assert metrics["acc_micro"] == pytest.approx(50.0)  # 3 of 6 questions
    assert metrics["acc_macro"] == pytest.approx(37.5)  # mean of 75 and 0


class LetterModel:
    """Puts log-prob 0 on the gold letter hidden in the last question's text, -5 elsewhere."""

    def __init__(self, wrong_for=()):
        self.wrong_for = set(wrong_for)
        self.calls = []

    def next_token_logprobs(self, prompts, candidates):
        self.calls.append(list(candidates))
        rows = []
        for prompt in prompts:
            gold = prompt.rsplit("金标", 1)[1][0]
            if gold in self.wrong_for:
                gold = candidates[-1] if gold != candidates[-1] else candidates[0]
            rows.append([0.0 if c == gold else -5.0 for c in candidates])
        return rows

    def generate(self, prompts, max_new_tokens, seed):
        return ["答案是" + p.rsplit("金标", 1)[1][0] for p in prompts]


def make_ceval_dir(tmp_path):
    header = "id,question,A,B,C,D,answer\n"
    dev = header.replace("answer", "answer,explanation") + "".join(
        f"{i},示例{i},a,b,c,d,A,解析\n" for i in range(5)
    )
    val = header + "".join(f"{i},金标{g}题,a,b,c,d,{g}\n" for i, g in enumerate("ABCD"))
    for subject in ("basic_medicine", "clinical_medicine"):
        write(tmp_path / "dev" / f"{subject}_dev.csv", dev)
        write(tmp_path / "val" / f"{subject}_val.csv", val)
    return tmp_path


def task_cfg(data_dir, **extra):
    return OmegaConf.create(
        {
            "name": "ceval",
            "format": "ceval",
            "data_dir": str(data_dir),
            "subjects": ["basic_medicine", "clinical_medicine"],
            "split": "val",
            "shot_split": "dev",
            "shots": 5,
            **extra,
        }
    )


def test_logprob_scoring_picks_the_highest_letter(tmp_path):
    task = MultiChoiceTask(task_cfg(make_ceval_dir(tmp_path)))
    assert task.deterministic and len(task.items) == 8
    assert task.items[0][1].count("答案：A\n\n") == 5  # five dev shots in the prompt
    perfect = task.run(LetterModel(), seed=0)["metrics"]
    assert perfect["acc_micro"] == 100.0
    # Mislead the model on gold letter B: one of four questions per subject goes wrong.
    result = task.run(LetterModel(wrong_for="B"), seed=0)
    assert result["metrics"]["acc/basic_medicine"] == 75.0
    assert result["metrics"]["acc_macro"] == 75.0


def test_generate_mode_parses_letters(tmp_path):
    task = MultiChoiceTask(task_cfg(make_ceval_dir(tmp_path), mode="generate"))
    result = task.run(LetterModel(), seed=3)
    assert not task.deterministic
    assert result["metrics"]["acc_micro"] == 100.0 and result["counts"]["unparseable"] == 0


def test_unlabelled_split_is_refused(tmp_path):
    data = make_ceval_dir(tmp_path)
    write(data / "test" / "basic_medicine_test.csv", "id,question,A,B,C,D\n0,问,a,b,c,d\n")
    with pytest.raises(ValueError, match="no answer"):
        MultiChoiceTask(task_cfg(data, split="test", subjects=["basic_medicine"]))


def test_medqa_non_object_line_and_invalid_utf8_name_file_and_line(tmp_path):
    listed = write(tmp_path / "list.jsonl", '{"question": "q", "options": {"A": "a"}}\n[1, 2]\n')
    with pytest.raises(
        DataFormatError, match=r"list\.jsonl: line 2: expected a JSON object, got list"
    ):
        read_medqa_jsonl(listed)
    gbk = tmp_path / "gbk.jsonl"
    gbk.write_bytes(b'\n{"question": "' + "高血压".encode("gbk") + b'"}\n')
    with pytest.raises(
        DataFormatError, match=rf"^{gbk}:2: not valid UTF-8 \(byte 0xb8 at column 15\)"
    ):
        read_medqa_jsonl(gbk)


def test_ceval_invalid_utf8_names_row_and_field(tmp_path):
    path = tmp_path / "val" / "basic_medicine_val.csv"
    path.parent.mkdir(parents=True)
    row = b"0," + "高血压".encode("gbk") + b",a,b,c,d,A\n"
    path.write_bytes(b"id,question,A,B,C,D,answer\n" + row)
    with pytest.raises(
        DataFormatError, match=r"row 1 \(line 2\): field 'question': not valid UTF-8"
    ):
        read_ceval_csv(path, "basic_medicine")
