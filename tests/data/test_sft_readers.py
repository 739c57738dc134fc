"""SFT readers (megatron_chimed/data/sft/readers.py) on the bundled files and small fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_chimed.data.jsonio import DataError, iter_json_array
from megatron_chimed.data.sft.encode import EncodeStats
from megatron_chimed.data.sft.readers import READERS, get_reader
from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA

SFT = SAMPLE_DATA / "sft"


def read(reader: str, path: Path) -> list[dict]:
    return list(get_reader(reader)(path, "src"))


def pairs(record: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in record["messages"]]


def write(tmp_path: Path, name: str, text: str, bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


# ---------------------------------------------------------------- bundled sample files


@pytest.mark.parametrize(
    ("reader", "name", "records", "turns"),
    [
        ("cmd_finetune", "cmd_finetune.json", 155, {2: 155}),
        ("chimed", "chimed.jsonl", 40, {2: 40}),
        ("mc", "mc_dialogues.json", 50, {2: 20, 4: 20, 6: 10}),
        ("meddialog_raw", "meddialog_raw.txt", 18, {2: 8, 4: 8, 6: 2}),
        ("meddialog_processed", "meddialog_processed.json", 18, {2: 8, 4: 8, 6: 2}),
        ("safety_prompts", "safety_prompts.json", 20, {2: 20}),
        ("sharegpt", "sharegpt.jsonl", 21, {2: 12, 4: 6, 6: 3}),
    ],
)
def test_sample_file(reader: str, name: str, records: int, turns: dict) -> None:
    got = read(reader, SFT / name)
    assert len(got) == records
    counts: dict[int, int] = {}
    for r in got:
        counts[len(r["messages"])] = counts.get(len(r["messages"]), 0) + 1
        assert r["source"] == "src"
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(m["content"] == m["content"].strip() and m["content"] for m in r["messages"])
    assert counts == turns


def test_registry_covers_every_format() -> None:
    assert sorted(READERS) == [
        "chimed", "cmd_finetune", "mc", "meddialog_processed", "meddialog_raw",
        "safety_prompts", "sharegpt",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="'alpaca'.*cmd_finetune"):
        get_reader("alpaca")


def test_meddialog_raw_and_processed_agree() -> None:
    raw = read("meddialog_raw", SFT / "meddialog_raw.txt")
    processed = read("meddialog_processed", SFT / "meddialog_processed.json")
    assert len(raw) == len(processed)
    assert raw[0]["messages"][0]["content"].startswith("医生您好，我三天来鼻塞，伴有流清涕")
    assert processed[0]["messages"][-1]["content"] == "建议做胸部X线，考虑社区获得性肺炎的可能。"


def test_mc_dialogue_yields_one_sample_per_doctor_turn_and_merges_runs() -> None:
    # Dialogue 00100: P, D, P, D, D, P, D, P -> three doctor turns; the two in a row merge and
    # the closing patient thanks has no answer.
    first = read("mc", SFT / "mc_dialogues.json")[:3]
    assert [len(r["messages"]) for r in first] == [2, 4, 6]
    assert first[1]["messages"] == first[2]["messages"][:4]
    assert first[1]["messages"][-1]["content"] == (
        "考虑2型糖尿病可能性大,建议到内分泌科做空腹血糖明确一下\n"
        "平时控制每日总热量，少吃精制米面和甜食"
    )
    assert first[2]["messages"][-2]["content"] == "需要吃药吗"


# ---------------------------------------------------------------- fixtures in the real formats


def test_cmd_with_bom_input_field_and_mid_file_bom(tmp_path: Path) -> None:
    rows = [
        {"instruction": "问题一", "input": "", "output": "回答一"},
        {"instruction": "问题二", "input": "补充信息", "output": "回答二"},
    ]
    text = json.dumps(rows[0], ensure_ascii=False) + "\n\ufeff" + json.dumps(rows[1]) + "\n\n"
    got = read("cmd_finetune", write(tmp_path, "train_zh_0.json", text, bom=True))
    assert [pairs(r) for r in got] == [
        [("user", "问题一"), ("assistant", "回答一")],
        [("user", "问题二\n\n补充信息"), ("assistant", "回答二")],
    ]


def test_chimed_prefers_the_adopted_answer(tmp_path: Path) -> None:
    row = {
        "question": "胃胀怎么办？",
        "answers": [
            {"text": "推荐的", "recommended": True, "adopted": False},
            {"text": "采纳的", "recommended": False, "adopted": True},
        ],
    }
    got = read("chimed", write(tmp_path, "c.jsonl", json.dumps(row, ensure_ascii=False)))
    assert pairs(got[0]) == [("user", "胃胀怎么办？"), ("assistant", "采纳的")]


MEDDIALOG_RAW = """\
id=7
https://www.haodf.com/doctorteam/flow_team_1.htm

Doctor faculty
消化内科

Description
疾病：
胃炎
病情描述：
胃胀

Dialogue
病人：
医生您好
病人：
我胃胀两个月
医生：
idea: 先做胃镜
病人:
好的谢谢

id=8
https://www.haodf.com/doctorteam/flow_team_2.htm

Dialogue
医生：
欢迎咨询
病人：
头痛
医生：
量血压
"""


def test_meddialog_raw_fixture(tmp_path: Path) -> None:
    got = read("meddialog_raw", write(tmp_path, "2020.txt", MEDDIALOG_RAW, bom=True))
    # Consecutive patient lines merge; a doctor line starting with "id" is an utterance, not a
    # new dialogue; the trailing patient turn (ASCII colon) has no answer; a leading doctor
    # turn is dropped.
    assert [pairs(r) for r in got] == [
        [("user", "医生您好\n我胃胀两个月"), ("assistant", "idea: 先做胃镜")],
        [("user", "头痛"), ("assistant", "量血压")],
    ]


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_json_array_is_streamed_in_any_chunking(tmp_path: Path, chunk: int) -> None:
    data = [["病人：你好", "医生：请讲"], [], ["病人：a,b]", "医生：12"], 3.25, 12345]
    path = write(tmp_path, "a.json", "\ufeff [\n" + ",\n ".join(map(json.dumps, data)) + " ]\n")
    got = list(iter_json_array(path, chunk_chars=chunk))
    assert [e for _, e in got] == data
    assert got[2][0] == f"{path}[2]"


def test_meddialog_processed_fixture(tmp_path: Path) -> None:
    data = [["病人：发热三天", "医生：查血常规", "病人：好的"], ["病人：咳嗽", "医生：多喝水"]]
    got = read("meddialog_processed", write(tmp_path, "train_data.json", json.dumps(data)))
    assert [pairs(r) for r in got] == [
        [("user", "发热三天"), ("assistant", "查血常规")],
        [("user", "咳嗽"), ("assistant", "多喝水")],
    ]


def test_safety_prompts_strips_leading_whitespace(tmp_path: Path) -> None:
    data = {"Insult": [{"prompt": "你真笨", "response": "\n\n请文明交流。", "type": "Insult"}]}
    got = read("safety_prompts", write(tmp_path, "s.json", json.dumps(data), bom=True))
    assert pairs(got[0]) == [("user", "你真笨"), ("assistant", "请文明交流。")]


def test_empty_responses_are_kept_for_the_encoder_to_count(tmp_path: Path) -> None:
    row = {"instruction": "问题", "input": "", "output": ""}
    got = read("cmd_finetune", write(tmp_path, "c.json", json.dumps(row)))
    assert got[0]["messages"][-1]["content"] == ""


# ---------------------------------------------------------------- errors name file, place, field


@pytest.mark.parametrize(
    ("reader", "text", "where", "message"),
    [
        ("cmd_finetune", '{"instruction": "q", "input": ""}', ":2: ", "field 'output': missing"),
        ("cmd_finetune", '{"instruction": "q", "input": "", "output": 5}', ":2: ",
         "field 'output': expected str, got int"),
        ("cmd_finetune", '{"instruction": "q",', ":2: ", "not valid JSON"),
        ("chimed", '{"question": "q", "answers": [{"txt": "a"}]}', ":2 answers[0]: ",
         "field 'text': missing"),
        ("mc", '{"content": [{"speaker": "患者"}]}', ":2 content[0]: ",
         "field 'utterance': missing"),
        ("sharegpt", '{"conversations": [{"from": "bot", "value": "x"}]}',
         ":2 conversations[0]: ", "field 'from': 'bot'"),
    ],
)  # fmt: skip
def test_jsonl_errors(tmp_path: Path, reader: str, text: str, where: str, message: str) -> None:
    good = {
        "cmd_finetune": '{"instruction": "q", "input": "", "output": "a"}',
        "chimed": '{"question": "q", "answers": [{"text": "a"}]}',
        "mc": '{"content": []}',
        "sharegpt": '{"conversations": []}',
    }[reader]
    path = write(tmp_path, "bad.jsonl", good + "\n" + text + "\n")
    with pytest.raises(DataError) as err:
        read(reader, path)
    assert str(err.value).startswith(f"{path}{where}")
    assert message in str(err.value)


def test_array_errors_name_the_index(tmp_path: Path) -> None:
    path = write(tmp_path, "p.json", '[["病人：a", "医生：b"], ["护士：c"]]')
    with pytest.raises(DataError, match=r"p\.json\[1\]\[0\]: expected '病人：…'"):
        read("meddialog_processed", path)
    path = write(tmp_path, "q.json", '[["病人：a"] ["病人：b"]]')
    with pytest.raises(DataError, match=r"q\.json\[0\]: expected ',' or '\]'"):
        read("meddialog_processed", path)
    path = write(tmp_path, "r.json", '{"a": 1}')
    with pytest.raises(DataError, match=r"r\.json: expected a JSON array"):
        read("meddialog_processed", path)
    path = write(tmp_path, "s.json", '[["病人：a"], ["病人：b", ')
    with pytest.raises(DataError, match=r"s\.json\[1\]: not valid JSON"):
        read("meddialog_processed", path)


def test_safety_and_meddialog_raw_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "s.json", '{"Insult": [{"prompt": "p"}]}')
    with pytest.raises(DataError, match=r"s\.json\['Insult'\]\[0\]: field 'response': missing"):
        read("safety_prompts", path)
    path = write(tmp_path, "t.json", '{"Insult": [\n{"prompt": "p",}]}')
    with pytest.raises(DataError, match=r"t\.json:2: not valid JSON"):
        read("safety_prompts", path)
    path = write(tmp_path, "m.txt", "\n病人：\n你好\n")
    with pytest.raises(DataError, match=r"m\.txt:2: field 'id': text before the first id= line"):
        read("meddialog_raw", path)


# ---------------------------------------------------------------- speakers and dropped turns


def mc_line(*turns: tuple[str, str]) -> str:
    content = [{"speaker": s, "utterance": u} for s, u in turns]
    return json.dumps({"id": "1", "content": content}, ensure_ascii=False)


def test_mc_speaker_with_stray_whitespace_keeps_its_role(tmp_path: Path) -> None:
    # "患者 " once made the patient's words part of the doctor's trained answer.
    text = mc_line(
        ("患者", "头晕"), ("医生", "量血压了吗"), ("患者 ", "150/95"), (" 医生\t", "就诊")
    )
    got = read("mc", write(tmp_path, "mc.json", text + "\n"))
    assert pairs(got[-1]) == [
        ("user", "头晕"),
        ("assistant", "量血压了吗"),
        ("user", "150/95"),
        ("assistant", "就诊"),
    ]


def test_mc_unknown_speaker_is_an_error_naming_file_line_and_speaker(tmp_path: Path) -> None:
    text = mc_line(("患者", "a"), ("医生", "b")) + "\n" + mc_line(("患者", "c"), ("护士", "d"))
    path = write(tmp_path, "mc.json", text + "\n")
    with pytest.raises(DataError) as err:
        read("mc", path)
    assert str(err.value).startswith(f"{path}:2 content[1]: field 'speaker': '护士': expected")


def test_every_dropped_turn_is_counted(tmp_path: Path) -> None:
    def turn(role: str, text: str) -> dict:
        return {"from": role, "value": text}

    rows = [
        # A leading gpt turn, then an exchange, then two unanswered human turns.
        [turn("gpt", "你好"), turn("human", "q"), turn("gpt", "a"), turn("human", "x"),
         turn("human", "y")],
        # Only questions: nothing to train on.
        [turn("human", "q1")],
        # An empty question between two answers.
        [turn("human", "q"), turn("gpt", "a"), turn("human", " "), turn("gpt", "b")],
    ]  # fmt: skip
    text = "\n".join(json.dumps({"conversations": r}, ensure_ascii=False) for r in rows)
    stats = EncodeStats()
    got = list(get_reader("sharegpt")(write(tmp_path, "s.jsonl", text + "\n"), "src", stats))
    # The empty turn goes, so the two answers around it merge into one.
    assert [pairs(r) for r in got] == [
        [("user", "q"), ("assistant", "a")],
        [("user", "q"), ("assistant", "a\nb")],
    ]
    assert stats.as_dict() == {
        "src": {
            "dropped_empty_turn": 1,
            "dropped_leading_assistant_turn": 1,
            "dropped_trailing_user_turn": 3,
        }
    }


# ---------------------------------------------------------------- invalid UTF-8


def test_invalid_utf8_names_file_and_line_not_a_byte_offset(tmp_path: Path) -> None:
    good = b'{"instruction": "q", "input": "", "output": "a"}\n'
    bad = b'{"instruction": "' + "高血压".encode("gbk") + b'", "input": "", "output": "a"}\n'
    path = tmp_path / "gbk.json"
    path.write_bytes(good * 3 + bad)
    with pytest.raises(DataError) as err:
        read("cmd_finetune", path)
    assert str(err.value).startswith(f"{path}:4: not valid UTF-8 (byte 0xb8 at column 18)")
    array = tmp_path / "a.json"
    array.write_bytes(b'[["\xe7\x97\x85\xe4\xba\xba\xef\xbc\x9aa"], ["\xff"]]')
    with pytest.raises(
        DataError, match=rf"^{array}\[1\]: not valid UTF-8 \(byte 0xff at character 3\)"
    ):
        read("meddialog_processed", array)
    whole = tmp_path / "s.json"
    whole.write_bytes(b'{"Insult": [\n{"prompt": "\xff", "response": "r"}]}')
    with pytest.raises(DataError, match=rf"^{whole}:2: not valid UTF-8 \(byte 0xff at column 13\)"):
        read("safety_prompts", whole)
