"""Your own SFT data: alpaca / sharegpt / qa formats, any file type, with a column mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_chimed.config.load import PACKAGE_DIR  # noqa: F401  (registers ${pkg:})
from megatron_chimed.data.jsonio import DataError
from megatron_chimed.data.records import iter_records
from megatron_chimed.data.sft.config import SourceConfig, load_data_config
from megatron_chimed.data.sft.encode import NO_RESPONSE, EncodeStats
from megatron_chimed.data.sft.readers import read_source

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


def source(path: Path, fmt: str, **kw) -> SourceConfig:
    cfg = SourceConfig(name="own", path=str(path), format=fmt, **kw)
    cfg.validate("data.sources[0]")
    return cfg


def turns(record: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in record["messages"]]


def test_alpaca_json_array_with_system_and_history(tmp_path: Path) -> None:
    rows = [
        {"instruction": "头痛怎么办？", "input": "", "output": "多休息。"},
        {"instruction": "解读化验单", "input": "血糖7.8", "output": "偏高。", "system": "你是医生"},
        {"instruction": "要吃药吗？", "output": "看情况。", "history": [["血压150", "偏高"]]},
    ]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    got = list(read_source(source(path, "alpaca")))
    assert [turns(r) for r in got] == [
        [("user", "头痛怎么办？"), ("assistant", "多休息。")],
        [("user", "解读化验单\n\n血糖7.8"), ("assistant", "偏高。")],
        [("user", "血压150"), ("assistant", "偏高"), ("user", "要吃药吗？"),
         ("assistant", "看情况。")],
    ]  # fmt: skip
    assert [r.get("system") for r in got] == [None, "你是医生", None]


def test_sharegpt_json_array_with_system_turn_and_role_content(tmp_path: Path) -> None:
    rows = [
        {"conversations": [
            {"from": "system", "value": "你是皮肤科医生"},
            {"from": "human", "value": "长痘"}, {"from": "gpt", "value": "少熬夜"},
            {"from": "human", "value": "能挤吗"}, {"from": "gpt", "value": "不能"},
        ]},
        {"conversations": [{"role": "user", "content": "咳嗽"},
                           {"role": "assistant", "content": "多喝水"}]},
    ]  # fmt: skip
    path = tmp_path / "s.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    got = list(read_source(source(path, "sharegpt")))
    assert [turns(r) for r in got] == [
        [("user", "长痘"), ("assistant", "少熬夜")],
        [("user", "长痘"), ("assistant", "少熬夜"), ("user", "能挤吗"), ("assistant", "不能")],
        [("user", "咳嗽"), ("assistant", "多喝水")],
    ]
    assert [r.get("system") for r in got] == ["你是皮肤科医生", "你是皮肤科医生", None]


def test_sharegpt_custom_roles_and_late_system_turn(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    row = {"dialog": [{"who": "患者", "text": "胃痛"}, {"who": "医生", "text": "做胃镜"}]}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    cfg = source(
        path, "sharegpt", columns={"messages": "dialog", "role": "who", "content": "text"},
        roles={"患者": "user", "医生": "assistant"},
    )  # fmt: skip
    assert [turns(r) for r in read_source(cfg)] == [[("user", "胃痛"), ("assistant", "做胃镜")]]
    late = {"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}]}
    path.write_text(json.dumps(late) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(read_source(source(path, "sharegpt")))
    assert str(err.value) == (
        f"{path}:1 conversations[1]: field 'from': a system turn after the dialogue started"
    )


def write_csv(tmp_path: Path) -> Path:
    path = tmp_path / "qa.csv"
    text = '问题,回答\n感冒能吃头孢吗？,不建议。\n"咳嗽, 夜里重","去儿科\n就诊。"\n'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return path


def test_csv_with_bom_and_column_mapping(tmp_path: Path) -> None:
    cfg = source(write_csv(tmp_path), "qa", columns={"prompt": "问题", "response": "回答"})
    assert [turns(r) for r in read_source(cfg)] == [
        [("user", "感冒能吃头孢吗？"), ("assistant", "不建议。")],
        [("user", "咳嗽, 夜里重"), ("assistant", "去儿科\n就诊。")],
    ]


def test_missing_column_names_file_row_column_and_mapping_key(tmp_path: Path) -> None:
    path = write_csv(tmp_path)
    with pytest.raises(DataError) as err:
        list(read_source(source(path, "qa", columns={"prompt": "问题"})))
    assert str(err.value) == (
        f"{path}:2: field 'answer': missing (set columns.response to one of the record's "
        "columns: ['回答', '问题'])"
    )
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"instruction": "q", "output": "a"}\n{"prompt": "q"}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(read_source(source(jsonl, "alpaca")))
    assert str(err.value).startswith(
        f"{jsonl}:2: field 'instruction': missing (set columns.instruction to"
    )


def test_errors_in_json_array_name_the_item_index(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('[{"instruction": "q", "output": "a"}, {"instruction": 3, "output": "a"}]')
    with pytest.raises(DataError) as err:
        list(read_source(source(path, "alpaca")))
    assert str(err.value) == f"{path}[1]: field 'instruction': expected str, got int " + (
        "(columns.instruction)"
    )


def test_prompt_only_qa_is_dropped_by_sft_and_counted(tmp_path: Path) -> None:
    from megatron_chimed.data.sft.encode import Encoder

    cfg = source(write_csv(tmp_path), "qa", columns={"prompt": "问题", "response": None})
    records = list(read_source(cfg))
    assert [turns(r) for r in records] == [
        [("user", "感冒能吃头孢吗？")],
        [("user", "咳嗽, 夜里重")],
    ]
    stats = EncodeStats()
    encoder = Encoder(template=None, tokenizer=None, budget=64)  # type: ignore[arg-type]
    assert encoder(records[0], None, stats) is None
    assert stats.as_dict() == {"own": {NO_RESPONSE: 1}}


def test_config_errors_are_one_line_naming_the_key(tmp_path: Path) -> None:
    path = write_csv(tmp_path)
    with pytest.raises(ValueError, match=r"^data.sources\[0\].columns.question: not a qa key"):
        source(path, "qa", columns={"question": "问题"})
    with pytest.raises(ValueError, match=r"^data.sources\[0\].format='dolly': expected one of"):
        source(path, "dolly")
    with pytest.raises(ValueError, match=r"^data.sources\[0\]: set exactly one of reader"):
        SourceConfig(name="x", path=str(path)).validate("data.sources[0]")


def test_file_type_by_suffix_or_explicit(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text('[{"a": 1}]')
    with pytest.raises(ValueError, match="cannot tell the file type from '.txt'; set file_type"):
        list(iter_records(path))
    assert list(iter_records(path, "json")) == [(f"{path}[0]", {"a": 1})]
    lines = tmp_path / "cmd.json"  # JSON Lines named .json, as CMD ships it
    lines.write_text('{"a": 1}\n{"a": 2}\n')
    assert list(iter_records(lines)) == [(f"{lines}:1", {"a": 1}), (f"{lines}:2", {"a": 2})]


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"q": ["头痛", "发烧"], "a": ["休息", None]}), path)
    cfg = source(path, "qa", columns={"prompt": "q", "response": "a"})
    with pytest.raises(DataError) as err:
        list(read_source(cfg))
    assert str(err.value) == f"{path}[1]: field 'a': expected str, got NoneType (columns.response)"
    assert list(iter_records(path)) == [(f"{path}[0]", {"q": "头痛", "a": "休息"}),
                                        (f"{path}[1]", {"q": "发烧", "a": None})]  # fmt: skip


def test_bundled_own_example_config() -> None:
    cfg = load_data_config(CONF / "sft_own_example.yaml")
    got = {s.name: [turns(r) for r in read_source(s)] for s in cfg.sources}
    assert [len(got[n]) for n in ("own_alpaca", "own_qa", "own_sharegpt")] == [3, 2, 2]
    assert got["own_qa"][0] == [
        ("user", "感冒发烧能吃头孢吗？"),
        ("assistant", "头孢类抗生素只对细菌感染有效，普通感冒多为病毒感染，"
                      "不建议自行服用；高热不退请就医。"),
    ]  # fmt: skip
