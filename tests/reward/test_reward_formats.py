"""Reward data from CSV, JSON arrays and Parquet, mapped with `columns` (reward/data.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_chimed.data.jsonio import DataError
from megatron_chimed.reward.data import RewardDataConfig, read_ranked_jsonl


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return path


def test_csv_chosen_rejected_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "问题,好,差\n头痛怎么办？,多休息，必要时就医。,忍着。\n")
    cfg = RewardDataConfig(columns={"prompt": "问题", "chosen": "好", "rejected": "差"})
    records, skipped = read_ranked_jsonl(path, cfg)
    assert skipped == 0
    assert [(r.prompt, r.responses, r.where) for r in records] == [
        ("头痛怎么办？", ("多休息，必要时就医。", "忍着。"), f"{path}:2")
    ]


def test_missing_column_names_row_column_and_mapping_key(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "问题,好,差\n头痛？,休息。,忍着。\n发烧？,,喝热水。\n")
    cfg = RewardDataConfig(columns={"prompt": "问题", "chosen": "好", "rejected": "差"})
    with pytest.raises(DataError) as err:
        read_ranked_jsonl(path, cfg)
    assert str(err.value) == f"{path}:3: field '好': missing or empty (column set by " + (
        "data.columns.chosen)"
    )
    with pytest.raises(DataError) as err:
        read_ranked_jsonl(path, RewardDataConfig(rank_order=["好", "差"]))
    assert str(err.value) == (
        f"{path}:2: field 'question': missing or empty (column set by data.prompt_field)"
    )


def test_json_array_ranked_columns_and_list_field(tmp_path: Path) -> None:
    path = tmp_path / "ranked.json"
    rows = [{"q": "咳嗽", "r1": "看医生", "r2": "多喝水", "r3": "不管", "all": ["甲", "乙"]}]
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    cfg = RewardDataConfig(columns={"prompt": "q", "ranked": ["r1", "r2", "r3"]})
    records, _ = read_ranked_jsonl(path, cfg)
    assert [(r.prompt, r.responses, r.where) for r in records] == [
        ("咳嗽", ("看医生", "多喝水", "不管"), f"{path}[0]")
    ]
    records, _ = read_ranked_jsonl(
        path, RewardDataConfig(columns={"prompt": "q", "responses": "all"})
    )
    assert records[0].responses == ("甲", "乙")


def test_csv_list_cell_as_json_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path, 'q,all\n咳嗽,"[""看医生"", ""多喝水""]"\n')
    cfg = RewardDataConfig(columns={"prompt": "q", "responses": "all"})
    assert read_ranked_jsonl(path, cfg)[0][0].responses == ("看医生", "多喝水")


def test_columns_config_errors() -> None:
    with pytest.raises(ValueError, match=r"^data.columns: unknown key\(s\) \['answer'\]"):
        RewardDataConfig(columns={"answer": "a"})
    with pytest.raises(ValueError, match="^data.columns: give chosen \\+ rejected"):
        RewardDataConfig(columns={"chosen": "a"})
    with pytest.raises(ValueError, match="^data.file_type='xlsx'"):
        RewardDataConfig(file_type="xlsx")


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"q": ["头痛"], "good": ["休息"], "bad": ["忍着"]}), path)
    cfg = RewardDataConfig(columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    records, _ = read_ranked_jsonl(path, cfg)
    assert [(r.prompt, r.responses, r.where) for r in records] == [
        ("头痛", ("休息", "忍着"), f"{path}[0]")
    ]
