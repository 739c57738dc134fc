"""Which tokenizer generation uses (megatron_chimed/generation/loading.py): the checkpoint's own
or a `--tokenizer` folder, checked against the embedding and the chat template before any
weights load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from megatron_chimed.checkpoint import layout
from megatron_chimed.fast_tokenizer import FastTokenizer
from megatron_chimed.generation.chat import parse_args
from megatron_chimed.generation.loading import checkpoint_tokenizer
from megatron_chimed.testing.tiny_ziya import TINY
from megatron_chimed.tokenizer import ZiyaTokenizer


def fake_checkpoint(root: Path, tokenizer: Path | None, vocab_size: int = 2000) -> Path:
    """A checkpoint root with metadata and tokenizer/ but no weights: enough for the checks."""
    ckpt = layout.iteration_dir(root, 0)
    ckpt.mkdir(parents=True)
    model = dataclasses.replace(TINY, vocab_size=vocab_size)
    layout.write_metadata(ckpt, {"model": dataclasses.asdict(model)})
    layout.write_latest(root, 0)
    if tokenizer is not None:
        layout.copy_tokenizer(tokenizer, root / layout.TOKENIZER)
    return root


def test_override_replaces_the_checkpoint_tokenizer(
    tiny_ziya: Path, tiny_ziya_json: Path, tmp_path: Path
) -> None:
    root = fake_checkpoint(tmp_path / "ckpt", tiny_ziya)
    assert type(checkpoint_tokenizer(root, template="ziya")) is ZiyaTokenizer
    chosen = checkpoint_tokenizer(root, tiny_ziya_json, template="ziya")
    assert type(chosen) is FastTokenizer and chosen.directory == tiny_ziya_json
    assert parse_args(["--checkpoint", "c", "--tokenizer", "t"]).tokenizer == Path("t")


def test_checkpoint_with_only_tokenizer_json(tiny_ziya_json: Path, tmp_path: Path) -> None:
    root = fake_checkpoint(tmp_path / "ckpt", tiny_ziya_json)
    assert type(checkpoint_tokenizer(root)) is FastTokenizer


def test_errors_come_before_the_weights(tiny_ziya: Path, tiny_chatml: Path, tmp_path: Path) -> None:
    bare = fake_checkpoint(tmp_path / "bare", None)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.model or tokenizer\.json.*--token"):
        checkpoint_tokenizer(bare)
    small = fake_checkpoint(tmp_path / "small", tiny_ziya, vocab_size=1000)
    with pytest.raises(ValueError, match="2000 tokens but the model in .* has only 1000 embedding"):
        checkpoint_tokenizer(small)
    root = fake_checkpoint(tmp_path / "ckpt", tiny_ziya)
    with pytest.raises(ValueError, match="no <human> / <bot> tokens; use template 'hf'"):
        checkpoint_tokenizer(root, tiny_chatml, template="ziya")
    assert checkpoint_tokenizer(root, tiny_chatml, template="hf").chat_template is not None
    with pytest.raises(ValueError, match="has no chat_template"):
        checkpoint_tokenizer(root, template="hf")  # the tiny Ziya ships none
