"""Conversion as copied byte ranges (convert/splice.py): row plans, the shard header, and the
page-cache fallback giving the same bytes."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import struct
from pathlib import Path

import pytest
import torch

from megatron_chimed.convert import hf_to_megatron, megatron_to_hf
from megatron_chimed.convert.mapping import LLAMA_CAUSAL_LM
from megatron_chimed.convert.safetensors_writer import _header
from megatron_chimed.convert.splice import to_hf_runs, to_megatron_runs
from megatron_chimed.testing.tiny_ziya import TINY, read_hf_tensors


def test_row_plans_follow_the_mapping_both_ways() -> None:
    """GQA (2 groups of 2 heads, head_dim 16): linear_qkv = per group [q 32 rows, k 16, v 16];
    the vocab rows are padded with zero rows (part -1); the way back reads the same rows."""
    cfg = dataclasses.replace(TINY, num_query_groups=2)
    qkv, fc1 = LLAMA_CAUSAL_LM.per_layer[1], LLAMA_CAUSAL_LM.per_layer[4]
    assert to_megatron_runs(qkv, cfg) == [
        (0, 0, 32), (1, 0, 16), (2, 0, 16), (0, 32, 32), (1, 16, 16), (2, 16, 16)
    ]  # fmt: skip
    assert to_hf_runs(qkv, cfg) == [
        [(0, 0, 32), (0, 64, 32)], [(0, 32, 16), (0, 96, 16)], [(0, 48, 16), (0, 112, 16)]
    ]  # fmt: skip
    ffn = cfg.ffn_hidden_size
    assert to_megatron_runs(fc1, cfg) == [(0, 0, ffn), (1, 0, ffn)]
    embedding = LLAMA_CAUSAL_LM.before_layers[0]
    padding = cfg.padded_vocab_size(1) - cfg.vocab_size
    assert to_megatron_runs(embedding, cfg) == [(0, 0, cfg.vocab_size), (-1, 0, padding)]
    assert to_hf_runs(embedding, cfg) == [[(0, 0, cfg.vocab_size)]]


def test_shard_header_is_contiguous_and_aligned() -> None:
    bf16 = torch.bfloat16
    shard = [("norm", (5120,), bf16), ("embed", (39410, 5120), bf16), ("score", (1, 5120), bf16)]
    header = _header(shard)
    (length,) = struct.unpack("<Q", header[:8])
    assert len(header) == 8 + length and len(header) % 8 == 0
    offsets = json.loads(header[8:])
    spans = [offsets[name]["data_offsets"] for name, _, _ in shard]  # in arrival order
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert spans[-1][1] == 2 * (5120 + 39410 * 5120 + 5120)


def test_page_cache_fallback_gives_the_same_bytes(
    tiny_ziya_safetensors: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the file system refuses O_DIRECT, both directions write through the page cache."""
    real_open = os.open

    def no_direct(path, flags, *args):  # noqa: ANN001, ANN202
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    ckpt = hf_to_megatron(tiny_ziya_safetensors, tmp_path / "megatron", progress=False)
    back = megatron_to_hf(ckpt, tmp_path / "hf", progress=False)
    source, exported = read_hf_tensors(tiny_ziya_safetensors), read_hf_tensors(back)
    assert sorted(exported) == sorted(source)
    for name, tensor in source.items():
        assert torch.equal(exported[name], tensor), name
