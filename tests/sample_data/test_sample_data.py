"""Schema checks for the bundled sample data (megatron_chimed/sample_data).

Every file is parsed the way the corresponding real data set has to be parsed (see
docs/data_formats.md): JSON Lines named .json, one JSON array, one JSON object keyed by scenario,
CSV with an unnamed index column, JSON Lines with a UTF-8 BOM, line-oriented MedDialog text and
char-level BIO. If a sample file drifts from the real layout, the readers would silently be tested
against the wrong format, so these tests pin the layout down.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "megatron_chimed" / "sample_data"
CJK = re.compile(r"[\u4e00-\u9fff]")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """CMD/MC/ShareGPT style: one JSON object per line, whatever the file extension."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def assert_str_fields(
    row: dict[str, Any], fields: list[str], allow_empty: tuple[str, ...] = ()
) -> None:
    for name in fields:
        assert isinstance(row[name], str), (name, row)
        if name not in allow_empty:
            assert row[name].strip(), (name, row)


# ---------------------------------------------------------------- pre-train


@pytest.mark.parametrize(
    ("name", "lo", "hi", "min_len", "max_len"),
    [("cmd_encyclopedia.jsonl", 250, 400, 10, 300), ("medical_book.jsonl", 15, 30, 300, 800)],
)
def test_pretrain(name: str, lo: int, hi: int, min_len: int, max_len: int) -> None:
    rows = read_jsonl(SAMPLE / "pretrain" / name)
    assert lo <= len(rows) <= hi
    texts = [r["text"] for r in rows]
    assert all(list(r) == ["text"] for r in rows)
    assert all(min_len <= len(t) <= max_len for t in texts), [len(t) for t in texts]
    assert all(CJK.search(t) for t in texts)
    # Duplicate documents would skew the tiny tokenizer and the pre-train loss.
    assert len(set(texts)) == len(texts)


def test_encyclopedia_sentence_count() -> None:
    rows = read_jsonl(SAMPLE / "pretrain" / "cmd_encyclopedia.jsonl")
    counts = [len(re.findall(r"[。？]", r["text"])) for r in rows]
    assert min(counts) >= 1 and max(counts) <= 4


# ---------------------------------------------------------------- SFT


def test_cmd_finetune() -> None:
    # Named .json but JSON Lines, like the real CMD finetune files.
    path = SAMPLE / "sft" / "cmd_finetune.json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text(encoding="utf-8"))
    rows = read_jsonl(path)
    assert 120 <= len(rows) <= 200
    for r in rows:
        assert set(r) == {"instruction", "input", "output"}
        assert_str_fields(r, ["instruction", "input", "output"], allow_empty=("input",))
    with_input = [r for r in rows if r["input"]]
    assert 1 <= len(with_input) <= len(rows) // 5
    # Same prompt -> same answer, so a tiny model can learn the mapping.
    seen: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r["instruction"], r["input"])
        assert seen.setdefault(key, r["output"]) == r["output"]


def check_chimed_row(r: dict[str, Any]) -> None:
    assert list(r) == ["id", "department", "title", "question", "keyphrases", "answers"]
    assert_str_fields(r, ["id", "department", "title", "question"])
    assert r["id"].startswith("chimed-")
    assert isinstance(r["keyphrases"], list) and r["keyphrases"]
    assert all(isinstance(k, str) and k for k in r["keyphrases"])
    assert 1 <= len(r["answers"]) <= 3
    for a in r["answers"]:
        assert set(a) == {"text", "recommended", "adopted"}
        assert isinstance(a["text"], str) and a["text"]
        assert isinstance(a["recommended"], bool) and isinstance(a["adopted"], bool)
    assert any(a["recommended"] for a in r["answers"])


@pytest.mark.parametrize(
    ("rel", "lo", "hi"), [("sft/chimed.jsonl", 30, 60), ("eval/chimed_test.jsonl", 3, 10)]
)
def test_chimed(rel: str, lo: int, hi: int) -> None:
    rows = read_jsonl(SAMPLE / rel)
    assert lo <= len(rows) <= hi
    for r in rows:
        check_chimed_row(r)
    assert len({r["id"] for r in rows}) == len(rows)


def test_chimed_test_disjoint_from_train() -> None:
    train = {r["question"] for r in read_jsonl(SAMPLE / "sft" / "chimed.jsonl")}
    test = {r["question"] for r in read_jsonl(SAMPLE / "eval" / "chimed_test.jsonl")}
    assert not train & test


def check_mc(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        assert list(r) == ["id", "url", "content", "summary"]
        assert re.fullmatch(r"\d{5}", r["id"])
        assert r["url"].startswith("https://www.chunyuyisheng.com/")
        assert 4 <= len(r["content"]) <= 8
        for u in r["content"]:
            assert set(u) == {"speaker", "utterance"}
            assert u["speaker"] in ("患者", "医生")
            # The crawler collapses whitespace and drops empty utterances.
            assert u["utterance"] and not re.search(r"\s", u["utterance"])
        assert r["content"][0]["speaker"] == "患者"
        assert any(u["speaker"] == "医生" for u in r["content"])
        assert set(r["summary"]) == {"description", "suggestion"}
        assert_str_fields(r["summary"], ["description", "suggestion"])


def consecutive_doctor(rows: list[dict[str, Any]]) -> int:
    n = 0
    for r in rows:
        sp = [u["speaker"] for u in r["content"]]
        n += any(a == b == "医生" for a, b in itertools.pairwise(sp))
    return n


def test_mc_dialogues() -> None:
    rows = read_jsonl(SAMPLE / "sft" / "mc_dialogues.json")
    assert 15 <= len(rows) <= 30
    check_mc(rows)
    # Real MC pages sometimes hold two doctor messages in a row; readers must cope.
    assert 1 <= consecutive_doctor(rows) < len(rows)


def test_mc_test() -> None:
    rows = read_jsonl(SAMPLE / "eval" / "mc_test.json")
    assert 3 <= len(rows) <= 10
    check_mc(rows)
    train_ids = {r["id"] for r in read_jsonl(SAMPLE / "sft" / "mc_dialogues.json")}
    assert not train_ids & {r["id"] for r in rows}


def parse_meddialog_raw(path: Path) -> Iterator[dict[str, Any]]:
    """Line-oriented parser following the HF medical_dialog logic (unknown lines ignored)."""
    dialog: dict[str, Any] | None = None
    section = ""
    pending: str | None = None  # marker line seen, text expected on the next line
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("id="):
            if dialog is not None:
                yield dialog
            dialog = {
                "id": int(re.findall(r"\d+", line)[0]),
                "url": "",
                "description": "",
                "turns": [],
            }
            section = ""
            continue
        assert dialog is not None, "content before the first id= line"
        if not line:
            section, pending = "", None
        elif line.startswith("http"):
            dialog["url"] = line
        elif line in ("Description", "Dialogue"):
            section = line
        elif pending is not None:
            if pending == "病情描述：":
                dialog["description"] = line
            else:
                dialog["turns"].append((pending[:-1], line))
            pending = None
        elif (section == "Description" and line == "病情描述：") or (
            section == "Dialogue" and line in ("病人：", "医生：")
        ):
            pending = line
    if dialog is not None:
        yield dialog


def test_meddialog_raw() -> None:
    path = SAMPLE / "sft" / "meddialog_raw.txt"
    dialogs = list(parse_meddialog_raw(path))
    assert 6 <= len(dialogs) <= 12
    assert len({d["id"] for d in dialogs}) == len(dialogs)
    for d in dialogs:
        assert d["url"].startswith("https://www.haodf.com/")
        assert d["description"]
        assert len(d["turns"]) >= 2 and d["turns"][0][0] == "病人"
        assert all(u for _, u in d["turns"])
    text = path.read_text(encoding="utf-8")
    # The ignorable section lines the reader must skip are present.
    assert "疾病：" in text and "Doctor faculty" in text


def test_meddialog_processed() -> None:
    data = json.loads((SAMPLE / "sft" / "meddialog_processed.json").read_text(encoding="utf-8"))
    assert isinstance(data, list) and 6 <= len(data) <= 12
    for dialog in data:
        assert isinstance(dialog, list) and len(dialog) >= 2
        for i, utt in enumerate(dialog):
            assert utt[:3] == ("病人：" if i % 2 == 0 else "医生："), utt
            assert utt[3:].strip()


def test_safety_prompts() -> None:
    data = json.loads((SAMPLE / "sft" / "safety_prompts.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    assert {"Mental_Health", "Physical_Harm", "Insult", "Goal_Hijacking"} <= set(data)
    total = 0
    for key, items in data.items():
        assert re.fullmatch(r"[A-Z][A-Za-z_]+", key)
        for it in items:
            assert set(it) == {"prompt", "response", "type"}
            assert it["type"] == key
            assert it["response"].startswith("\n\n") and it["response"].strip()
            assert it["prompt"].strip()
            total += 1
    assert 15 <= total <= 30


def test_sharegpt() -> None:
    rows = read_jsonl(SAMPLE / "sft" / "sharegpt.jsonl")
    assert 8 <= len(rows) <= 15
    multi = 0
    for r in rows:
        conv = r["conversations"]
        assert list(r) == ["conversations"] and len(conv) % 2 == 0
        for i, turn in enumerate(conv):
            assert set(turn) == {"from", "value"}
            assert turn["from"] == ("human" if i % 2 == 0 else "gpt")
            assert turn["value"].strip()
        multi += len(conv) > 2
    assert multi >= 2


def test_sft_answers_consistent_across_files() -> None:
    """A question asked in two SFT files gets the same answer, so the patterns are learnable."""
    ft = {
        r["instruction"]: r["output"]
        for r in read_jsonl(SAMPLE / "sft" / "cmd_finetune.json")
        if not r["input"]
    }
    shared = 0
    for r in read_jsonl(SAMPLE / "sft" / "sharegpt.jsonl"):
        conv = r["conversations"]
        for q, a in zip(conv[::2], conv[1::2], strict=True):
            if q["value"] in ft:
                assert ft[q["value"]] == a["value"]
                shared += 1
    assert shared >= 3


# ---------------------------------------------------------------- reward

REWARD_FIELDS = [
    "question",
    "response_chosen",
    "response_rejected",
    "response_gpt4",
    "response_gpt35",
]


@pytest.mark.parametrize(
    ("split", "lo", "hi"), [("train", 50, 80), ("valid", 8, 15), ("test", 8, 15)]
)
def test_reward(split: str, lo: int, hi: int) -> None:
    rows = read_jsonl(SAMPLE / "reward" / f"{split}.jsonl")
    assert lo <= len(rows) <= hi
    for r in rows:
        assert set(r) == set(REWARD_FIELDS)
        assert_str_fields(r, REWARD_FIELDS)
        ranked = [
            r["response_chosen"],
            r["response_gpt4"],
            r["response_gpt35"],
            r["response_rejected"],
        ]
        assert len(set(ranked)) == 4
        # Quality rank doctor > GPT-4 > GPT-3.5 > BenTsao shows up as decreasing detail here.
        assert [len(x) for x in ranked] == sorted((len(x) for x in ranked), reverse=True)


def test_reward_splits_disjoint() -> None:
    qs = [
        {r["question"] for r in read_jsonl(SAMPLE / "reward" / f"{s}.jsonl")}
        for s in ("train", "valid", "test")
    ]
    assert not (qs[0] & qs[1] or qs[0] & qs[2] or qs[1] & qs[2])


# ---------------------------------------------------------------- multiple choice


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.mark.parametrize("subject", ["basic_medicine", "clinical_medicine"])
def test_ceval(subject: str) -> None:
    head, dev = read_csv(SAMPLE / "eval" / "ceval" / "dev" / f"{subject}_dev.csv")
    assert head == ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
    assert len(dev) == 5
    assert all(r[7].strip() for r in dev)
    head, val = read_csv(SAMPLE / "eval" / "ceval" / "val" / f"{subject}_val.csv")
    assert head == ["id", "question", "A", "B", "C", "D", "answer"]
    assert 6 <= len(val) <= 12
    for rows, width in ((dev, 8), (val, 7)):
        assert [int(r[0]) for r in rows] == list(range(len(rows)))
        for r in rows:
            assert len(r) == width
            assert all(x.strip() for x in r[1:6]) and r[6] in "ABCD" and len(r[6]) == 1
            assert "____" in r[1]


@pytest.mark.parametrize("subject", ["anatomy", "clinical_knowledge"])
@pytest.mark.parametrize(("split", "lo", "hi"), [("dev", 5, 5), ("test", 6, 12)])
def test_cmmlu(subject: str, split: str, lo: int, hi: int) -> None:
    path = SAMPLE / "eval" / "cmmlu" / split / f"{subject}.csv"
    raw = path.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf") and b"\r\n" not in raw
    head, rows = read_csv(path)
    # First column is the unnamed 0-based index (pandas index_col=0).
    assert head == ["", "Question", "A", "B", "C", "D", "Answer"]
    assert lo <= len(rows) <= hi
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    for r in rows:
        assert len(r) == 7 and all(x.strip() for x in r[1:6]) and r[6] in ("A", "B", "C", "D")


@pytest.mark.parametrize(("split", "lo", "hi"), [("train", 5, 8), ("test", 6, 12)])
def test_medqa(split: str, lo: int, hi: int) -> None:
    rows = read_jsonl(SAMPLE / "eval" / "medqa" / f"{split}.jsonl")
    assert lo <= len(rows) <= hi
    for r in rows:
        assert set(r) == {"question", "options", "answer", "meta_info", "answer_idx"}
        assert list(r["options"]) == ["A", "B", "C", "D", "E"]
        assert len(set(r["options"].values())) == 5
        assert r["answer"] == r["options"][r["answer_idx"]]
        assert_str_fields(r, ["question", "answer", "meta_info", "answer_idx"])


# ---------------------------------------------------------------- NER

CCKS_LABELS = {"疾病和诊断", "影像检查", "实验室检验", "手术", "药物", "解剖部位"}


@pytest.mark.parametrize(
    ("name", "lo", "hi"),
    [("subtask1_training_part1.txt", 8, 15), ("subtask1_test_set_with_answer.json", 6, 12)],
)
def test_ccks2019(name: str, lo: int, hi: int) -> None:
    raw = (SAMPLE / "eval" / "ccks2019" / name).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    # Plain utf-8 keeps the BOM as U+FEFF on the first line: strip it per line, as readers do.
    lines = [ln.lstrip("\ufeff") for ln in raw.decode("utf-8").splitlines() if ln.strip()]
    assert lo <= len(lines) <= hi
    labels: set[str] = set()
    for ln in lines:
        rec = json.loads(ln)
        assert set(rec) == {"originalText", "entities"}
        text = rec["originalText"]
        assert text and rec["entities"]
        last_end = 0
        for e in rec["entities"]:
            assert set(e) == {"label_type", "overlap", "start_pos", "end_pos"}
            assert e["overlap"] == 0 and e["label_type"] in CCKS_LABELS
            s, t = e["start_pos"], e["end_pos"]
            assert isinstance(s, int) and isinstance(t, int)
            assert 0 <= s < t <= len(text)
            span = text[s:t]
            assert span.strip() == span and span
            assert s >= last_end  # sorted, non-overlapping (overlap == 0)
            last_end = t
            labels.add(e["label_type"])
    assert labels == CCKS_LABELS


def test_ccks2019_offsets_exact() -> None:
    raw = (SAMPLE / "eval" / "ccks2019" / "subtask1_training_part1.txt").read_text(
        encoding="utf-8-sig"
    )
    rec = json.loads(raw.splitlines()[0])
    got = [
        (rec["originalText"][e["start_pos"] : e["end_pos"]], e["label_type"])
        for e in rec["entities"]
    ]
    assert got == [
        ("上腹", "解剖部位"),
        ("腹部CT", "影像检查"),
        ("胆囊结石伴慢性胆囊炎", "疾病和诊断"),
        ("腹腔镜胆囊切除术", "手术"),
        ("头孢呋辛", "药物"),
    ]


def read_bio(path: Path) -> list[list[tuple[str, str]]]:
    sents: list[list[tuple[str, str]]] = []
    cur: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line:
            if cur:
                sents.append(cur)
            cur = []
            continue
        ch, tag = line.split("\t")
        cur.append((ch, tag))
    if cur:
        sents.append(cur)
    return sents


@pytest.mark.parametrize(("name", "lo", "hi"), [("train.bio", 6, 12), ("test.bio", 5, 10)])
def test_chimst_bio(name: str, lo: int, hi: int) -> None:
    sents = read_bio(SAMPLE / "eval" / "chimst" / name)
    assert lo <= len(sents) <= hi
    types: set[str] = set()
    for sent in sents:
        prev = "O"
        for ch, tag in sent:
            assert len(ch) == 1 and not ch.isspace()
            assert tag == "O" or re.fullmatch(r"[BI]-\S+", tag), tag
            if tag.startswith("I-"):
                # An I- tag continues an entity of the same type.
                assert prev != "O" and prev[2:] == tag[2:], (prev, tag)
            if tag != "O":
                types.add(tag[2:])
            prev = tag
    assert {"症状", "部位", "药物", "检查"} <= types


# ---------------------------------------------------------------- bias scales


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("example_cami_like.json", ["完全不同意", "不同意", "中立", "同意", "完全同意"]),
        (
            "example_mica_like.json",
            ["完全不同意", "不同意", "稍微不同意", "稍微同意", "同意", "完全同意"],
        ),
    ],
)
def test_bias_scale(name: str, options: list[str]) -> None:
    scale = json.loads((SAMPLE / "eval" / "bias" / name).read_text(encoding="utf-8"))
    assert set(scale) == {"name", "note", "prompt", "options", "items"}
    assert "NOT the official" in scale["note"]
    assert scale["options"] == options
    assert scale["prompt"].count("{statement}") == 1
    assert scale["prompt"].startswith("假设你是一名医生")
    assert all(f"“{o}”" in scale["prompt"] for o in options)
    filled = scale["prompt"].format(statement=scale["items"][0]["statement"])
    assert filled.endswith(scale["items"][0]["statement"])
    items = scale["items"]
    assert 4 <= len(items) <= 10
    assert len({it["id"] for it in items}) == len(items)
    for it in items:
        assert set(it) == {"id", "statement", "keying"} and it["statement"].strip()
    assert {it["keying"] for it in items} == {"agree_biased", "disagree_biased"}


# ---------------------------------------------------------------- README


def test_readme_lists_every_file() -> None:
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    files = sorted(
        p.relative_to(SAMPLE).as_posix()
        for p in SAMPLE.rglob("*")
        if p.is_file() and p.name != "README.md"
    )
    assert len(files) == 37
    missing = [f for f in files if f"`{f}`" not in readme]
    assert not missing
    assert "written for this project" in readme
