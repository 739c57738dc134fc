"""Encoding jobs: chunks keep their records' order and tags; the default worker count."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from megatron_chimed.data.sft import pool
from megatron_chimed.data.sft.encode import Encoder, EncodeStats
from megatron_chimed.data.template import get_template
from megatron_chimed.fast_tokenizer import FastTokenizer


def qa(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}], "source": "s"}  # fmt: skip


def test_a_chunk_holds_its_records_in_order(tok, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "CHUNK_RECORDS", 2)
    encoder = Encoder(get_template("ziya"), tok, 64)
    records = [qa("头痛", "多休息"), qa("发烧", "  "), qa("咳" * 80, "多喝水" * 40),
               qa("胃痛", "就医")]  # fmt: skip
    job_list = list(pool.jobs((10 + i, r, None) for i, r in enumerate(records)))
    assert [tag.tolist() for tag, _ in job_list] == [[10, 11], [12, 13]]
    with pool.encoding_map(encoder, workers=1) as encode:
        chunks = list(encode(job_list))
    events = [e for c in chunks for e in c.events]
    assert events == ["kept", "dropped_empty_response", "dropped_too_long", "kept"]
    alone = [encoder(r, None, EncodeStats()) for r in (records[0], records[3])]
    assert chunks[0].lengths.tolist() == [len(alone[0][0]), 0]
    assert chunks[1].tokens.tolist() == alone[1][0] and chunks[1].loss_mask.tolist() == alone[1][1]
    assert chunks[0].tokens.dtype == np.int32 and chunks[0].loss_mask.dtype == np.uint8


def test_default_workers_share_the_cores_among_the_node_ranks(monkeypatch) -> None:
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert pool.default_workers() == cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert pool.default_workers() == 12
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "128")
    assert pool.default_workers() == 1


def test_a_tokenizer_that_reloads_differently_encodes_in_process(
    tiny_ziya: Path, tiny_ziya_json: Path, tmp_path: Path, caplog
) -> None:
    # Both files: workers would load tokenizer.model, not the tokenizer.json given here.
    folder = Path(shutil.copytree(tiny_ziya_json, tmp_path / "both"))
    shutil.copy(tiny_ziya / "tokenizer.model", folder / "tokenizer.model")
    encoder = Encoder(get_template("ziya"), FastTokenizer(folder), 64)
    with caplog.at_level(logging.WARNING), pool.encoding_map(encoder, workers=4) as encode:
        (chunk,) = encode(pool.jobs([(0, qa("头痛", "多休息"), None)]))
    assert "encoding in one process" in caplog.text and chunk.events == ["kept"]
