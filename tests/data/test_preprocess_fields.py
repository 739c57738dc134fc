"""Pre-training preprocess: a missing text field says which option names it."""

from __future__ import annotations

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
