"""NER readers (CCKS-2019 with BOM, BIO, span JSON), prompt, tolerant parser and entity F1."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from megatron_chimed.eval.errors import DataFormatError
from megatron_chimed.eval.ner import NERTask, build_ner_prompt, entity_f1, parse_ner_answer
from megatron_chimed.eval.ner_data import NERDoc, read_bio, read_ccks2019, read_span_jsonl

TEXT = (
    "患者因“反复咳嗽3月”入院，胸部CT示右肺上叶结节，行胸腔镜右肺上叶切除术，术后予头孢呋辛抗感染。"
)
CCKS_RECORD = {
    "originalText": TEXT,
    "entities": [
        {"label_type": "影像检查", "overlap": 0, "start_pos": 14, "end_pos": 18},
        {"end_pos": 23, "label_type": "解剖部位", "overlap": 0, "start_pos": 19},
        {"label_type": "药物", "overlap": 0, "start_pos": 41, "end_pos": 45},
    ],
}
LABELS = ["疾病和诊断", "影像检查", "解剖部位", "药物"]


def write_ccks(path, records):
    # Two concatenated parts, each opening with its own BOM, as the training parts do.
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path.write_bytes(
        b"\xef\xbb\xbf"
        + "\n".join(lines[:1]).encode()
        + b"\n\xef\xbb\xbf"
        + "\n".join(lines[1:]).encode()
        + b"\n"
    )
    return path


def test_ccks_reader_bom_and_exclusive_end(tmp_path):
    path = write_ccks(tmp_path / "part1.txt", [CCKS_RECORD, CCKS_RECORD])
    docs = read_ccks2019(path)
    assert len(docs) == 2 and docs[1].text == TEXT
    assert docs[0].entities == (
        ("胸部CT", "影像检查"),
        ("右肺上叶", "解剖部位"),
        ("头孢呋辛", "药物"),
    )


def test_ccks_span_outside_text_names_line_and_field(tmp_path):
    bad = {"originalText": "短", "entities": [{"label_type": "药物", "start_pos": 0, "end_pos": 5}]}
    path = write_ccks(tmp_path / "t.json", [CCKS_RECORD, bad])
    with pytest.raises(DataFormatError, match=r"t\.json: line 2: entities\[0\]: span \[0, 5\)"):
        read_ccks2019(path)


def test_span_jsonl_with_inclusive_end(tmp_path):
    path = tmp_path / "chimst.jsonl"
    path.write_text(
        json.dumps(
            {"id": "d1", "sentence": "胃痛三天", "terms": [{"b": 0, "e": 1, "type": "症状"}]},
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    (doc,) = read_span_jsonl(
        path,
        text_key="sentence",
        entities_key="terms",
        start_key="b",
        end_key="e",
        label_key="type",
        end_inclusive=True,
    )
    assert doc == NERDoc("d1", "胃痛三天", (("胃痛", "症状"),))


def test_bio_reader_sentences_and_stray_inside_tag(tmp_path):
    path = tmp_path / "test.bio"
    bio = "胃\tB-部位\n痛\tI-症状\n三\tO\n\n头\tB-部位\n部\tI-部位\n"
    path.write_text(bio, encoding="utf-8-sig")
    docs = read_bio(path)
    assert [d.text for d in docs] == ["胃痛三", "头部"]
    # I-症状 after B-部位 starts a new entity instead of gluing two labels together.
    assert docs[0].entities == (("胃", "部位"), ("痛", "症状"))
    assert docs[1].entities == (("头部", "部位"),)
    path.write_text("胃\tX-部位\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"test\.bio: line 1: tag 'X-部位'"):
        read_bio(path)


def test_prompt_lists_entities_per_label():
    entities = (("头孢呋辛", "药物"), ("肺炎", "疾病和诊断"), ("肺炎", "疾病和诊断"))
    shot = NERDoc("s", "头孢呋辛治疗肺炎", entities)
    prompt = build_ner_prompt(NERDoc("q", "胃痛", ()), [shot], LABELS)
    assert (
        "文本：头孢呋辛治疗肺炎\n实体：\n"
        "疾病和诊断：肺炎\n影像检查：无\n解剖部位：无\n药物：头孢呋辛\n\n"
    ) in prompt
    assert prompt.endswith("文本：胃痛\n实体：\n")


def test_parser_lines_json_none_and_malformed():
    answer = (
        "疾病和诊断：肺炎；肺炎；\n- 药物: “头孢呋辛”, 阿莫西林\n影像检查：无\n"
        "\n文本：下一例\n药物：编造"  # an invented next example must be ignored
    )
    entities, ok = parse_ner_answer(answer, LABELS)
    assert ok and entities == {("肺炎", "疾病和诊断"), ("头孢呋辛", "药物"), ("阿莫西林", "药物")}
    assert parse_ner_answer('{"药物": ["头孢呋辛"], "疾病和诊断": "无"}', LABELS) == (
        {("头孢呋辛", "药物")},
        True,
    )
    assert parse_ner_answer("无", LABELS) == (set(), True)
    assert parse_ner_answer("这段文本提到了肺炎。", LABELS) == (set(), False)
    assert parse_ner_answer("症状：咳嗽", LABELS) == (set(), False)  # label not in the set


def test_f1_partial_wrong_label_duplicate_and_malformed():
    gold = [
        {("胸部CT", "影像检查"), ("右肺上叶", "解剖部位"), ("头孢呋辛", "药物")},
        {("肺炎", "疾病和诊断")},
    ]
    output = "影像检查：胸部CT；胸部CT\n解剖部位：右肺\n疾病和诊断：头孢呋辛"
    first, _ = parse_ner_answer(output, LABELS)
    second, ok = parse_ner_answer("我不确定", LABELS)
    assert not ok and second == set()
    metrics = entity_f1(gold, [first, second], LABELS)
    # predicted: 胸部CT (tp, duplicate counted once), 右肺 (partial: fp), 头孢呋辛 as disease (fp)
    # gold missed: 右肺上叶, 头孢呋辛/药物, 肺炎 -> tp 1, fp 2, fn 3
    assert metrics["precision_micro"] == pytest.approx(100 / 3)
    assert metrics["recall_micro"] == pytest.approx(25.0)
    assert metrics["f1_micro"] == pytest.approx(100 * 2 * (1 / 3) * 0.25 / (1 / 3 + 0.25))
    assert metrics["f1/影像检查"] == 100.0
    assert metrics["f1/药物"] == 0.0 and metrics["recall/解剖部位"] == 0.0


class EchoGoldModel:
    """Answers each NER prompt with the gold line for 药物 only, then garbage for doc 2."""

    def generate(self, prompts, max_new_tokens, seed):
        return ["药物：头孢呋辛\n", "？？"][: len(prompts)]


def test_ner_task_counts_unparseable(tmp_path):
    shots = write_ccks(tmp_path / "train.txt", [CCKS_RECORD] * 5)
    test = write_ccks(tmp_path / "test.json", [CCKS_RECORD, CCKS_RECORD])
    cfg = OmegaConf.create({"reader": "ccks2019", "shot_file": str(shots), "test_file": str(test)})
    task = NERTask(cfg)
    assert task.labels[0] == "疾病和诊断" and len(task.labels) == 6
    assert task.prompts[0].count("影像检查：胸部CT") == 5
    result = task.run(EchoGoldModel(), seed=0)
    assert result["counts"]["unparseable"] == 1
    assert result["metrics"]["precision_micro"] == 100.0
    assert result["metrics"]["recall_micro"] == pytest.approx(100 / 6)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('["胸痛", []]', r"line 2: expected a JSON object, got list"),
        (
            '{"text": "胸痛", "entities": ["胸痛"]}',
            r"line 2: entities\[0\]: expected a JSON object",
        ),
    ],
)
def test_span_jsonl_non_objects_name_line_and_field(tmp_path, line, message):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "胸痛", "entities": []}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"s\.jsonl: {message}"):
        read_span_jsonl(path)


def test_ccks_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "gbk.txt"
    path.write_bytes(b'{"originalText": "' + "胸痛".encode("gbk") + b'", "entities": []}\n')
    with pytest.raises(DataFormatError, match=rf"^{path}:1: not valid UTF-8"):
        read_ccks2019(path)
