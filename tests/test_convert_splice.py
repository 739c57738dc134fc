"""Conversion as kernel-copied byte ranges (convert/splice.py): row plans, 64 KiB layouts, and
the user-space fallback giving the same bytes."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from test_convert import hf_tensors

from megatron_chimed.convert import hf_to_megatron, megatron_to_hf
from megatron_chimed.convert.dcp_reader import CheckpointReader
from megatron_chimed.convert.mapping import LLAMA_CAUSAL_LM
from megatron_chimed.convert.safetensors_writer import ALIGN, _layout
from megatron_chimed.convert.splice import to_hf_runs, to_megatron_runs
from megatron_chimed.testing.tiny_ziya import TINY


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


def test_shard_layout_aligns_the_large_tensors() -> None:
    bf16 = torch.bfloat16
    shard = [
        ("norm", (5120,), bf16),
        ("embed", (39410, 5120), bf16),
        ("q", (5120, 5120), bf16),
        ("score", (1, 5120), bf16),
        ("head", (39410, 5120), bf16),
        ("up", (13824, 5120), bf16),
    ]
    header, where = _layout(shard)
    (length,) = struct.unpack("<Q", header[:8])
    assert len(header) == 8 + length and len(header) % ALIGN == 0
    offsets = json.loads(header[8:])
    spans = sorted(offsets[name]["data_offsets"] for name, _, _ in shard)
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no holes
    for name in ("q", "up", "embed"):  # the multiples of 64 KiB, then the largest odd one
        assert where[name] % ALIGN == 0, name
    assert where["head"] % ALIGN != 0  # a second odd-sized one cannot be aligned too
    assert where["q"] < where["up"] < where["embed"]


def test_converted_tensors_are_64k_aligned(tiny_ziya_safetensors: Path, tmp_path: Path) -> None:
    ckpt = hf_to_megatron(tiny_ziya_safetensors, tmp_path / "megatron", progress=False)
    reader = CheckpointReader(ckpt / "iter_0000000")
    source = reader.row_source("decoder.layers.self_attention.linear_qkv.weight", 1)
    assert source is not None and len(source.blocks) == 1
    assert source.blocks[0].offset % ALIGN == 0


def test_user_space_fallback_gives_the_same_bytes(
    tiny_ziya_safetensors: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where copy_file_range fails (another file system, an old kernel), the same ranges are
    copied through user space, both ways."""

    def unsupported(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    ckpt = hf_to_megatron(tiny_ziya_safetensors, tmp_path / "megatron", progress=False)
    back = megatron_to_hf(ckpt, tmp_path / "hf", progress=False)
    source, exported = hf_tensors(tiny_ziya_safetensors), hf_tensors(back)
    assert sorted(exported) == sorted(source)
    for name, tensor in source.items():
        assert torch.equal(exported[name], tensor), name
