"""Pre-training preprocess: each file type read, and a missing text field says where and which
option names it."""

from __future__ import annotations

import pytest

from megatron_chimed.config.schema import PipelineConfig
from megatron_chimed.data.indexed import _Chunk, _parse


def test_missing_text_field_points_to_json_keys() -> None:
    chunk = _Chunk("corpus.jsonl", 7, ['{"content": "高血压是常见病。"}\n'])
    texts, errors = _parse(chunk, ["text"])
    assert texts == {"text": []}
    assert errors == [
        "corpus.jsonl:7: field 'text' is missing or not a string (the text field is set by "
        "--json-keys, or pipeline.pretrain_text_field; record has ['content'])"
    ]
    assert _parse(chunk, ["content"]) == ({"content": ["高血压是常见病。"]}, [])


def test_pipeline_takes_the_text_field() -> None:
    assert PipelineConfig().pretrain_text_field == "text"
    assert PipelineConfig(pretrain_text_field="content").pretrain_text_field == "content"


def _chunk_results(path, keys):
    from megatron_chimed.data.indexed import _chunks

    texts, errors = {key: [] for key in keys}, []
    for chunk in _chunks([path], keys):
        got, bad = _parse(chunk, keys)
        for key in keys:
            texts[key] += got[key]
        errors += bad
    return texts, errors


def _write_rows(tmp_path, name, rows):
    import csv
    import json

    path = tmp_path / name
    if name.endswith(".csv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "where"),
    [("corpus.csv", "corpus.csv:3"), ("corpus.json", "corpus.json[1]"),
     ("corpus.parquet", "corpus.parquet[1]")],
)  # fmt: skip
def test_other_file_types_and_where_a_field_is_missing(tmp_path, name, where) -> None:
    rows = [{"content": "高血压是常见病。", "id": "1"}, {"content": "多喝水。", "id": "2"}]
    path = _write_rows(tmp_path, name, rows)
    assert _chunk_results(path, ["content"]) == ({"content": ["高血压是常见病。", "多喝水。"]}, [])
    texts, errors = _chunk_results(path, ["text"])
    assert texts == {"text": []} and len(errors) == 2
    assert errors[1] == (
        f"{tmp_path / where}: field 'text' is missing or not a string (the text field is set by "
        "--json-keys, or pipeline.pretrain_text_field; record has ['content', 'id'])"
    )


def test_a_broken_json_array_is_malformed_and_names_the_element(tmp_path) -> None:
    from megatron_chimed.data.indexed import MalformedRecord

    path = tmp_path / "broken.json"
    path.write_text('[{"text": "好"}, {"text": 断}]', encoding="utf-8")
    with pytest.raises(MalformedRecord, match=rf"^{path}\[1\]: not valid JSON"):
        _chunk_results(path, ["text"])


def test_json_lines_named_json_and_unknown_suffixes_stay_json_lines(tmp_path) -> None:
    for name in ("cmd.json", "corpus.txt"):
        path = tmp_path / name
        path.write_text('{"text": "头痛"}\n{"body": "x"}\n', encoding="utf-8")
        texts, errors = _chunk_results(path, ["text"])
        assert texts == {"text": ["头痛"]}
        assert errors[0].startswith(f"{path}:2: field 'text' is missing")
