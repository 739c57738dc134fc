"""Pre-training data (megatron_chimed/data/pretrain.py): splits checked before megatron builds
its indices, empty datasets named, and the index cache kept out of the data folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_chimed.data.indexed import output_prefix, preprocess
from megatron_chimed.data.pretrain import parse_blend, split_documents
from megatron_chimed.testing.workers import ROOT

TIMEOUT_S = 90  # the child imports torch and megatron (about 10 s here); the check is instant


# Run in a child process: megatron builds split indices in worker threads, and a hung thread can
# neither be interrupted nor joined, so only killing its process ends the test in time.
CHILD = """
import json
import sys
from megatron_chimed.data.pretrain import PretrainDataConfig, build_pretrain_datasets
from megatron_chimed.tokenizer import ZiyaTokenizer

prefix, split, tokenizer, cache = sys.argv[1:]
data = PretrainDataConfig(blend=[1.0, prefix], split=split)
try:
    datasets = build_pretrain_datasets(data, ZiyaTokenizer(tokenizer), 16, 1234, (4, 2, 2), cache)
except ValueError as err:
    print(err)
    sys.exit(3)
print(json.dumps([None if d is None else len(d) for d in datasets]))
"""


def build(prefix: str, split: str, tiny_ziya: Path, cache: Path) -> tuple[int, str]:
    """(exit status, last output line) of building the datasets; fails after TIMEOUT_S."""
    cmd = [sys.executable, "-c", CHILD, prefix, split, str(tiny_ziya), str(cache)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"building the datasets of split {split} still runs after {TIMEOUT_S} s")
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-2000:]
    return proc.returncode, lines[-1]


def corpus(tmp_path: Path, tiny_ziya: Path, documents: int) -> str:
    """An indexed dataset of `documents` short documents; returns its prefix."""
    src = tmp_path / f"docs{documents}.jsonl"
    lines = [json.dumps({"text": f"第{i}篇：高血压患者应低盐饮食。" * 3}) for i in range(documents)]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    preprocess([src], tmp_path / f"c{documents}", tiny_ziya, progress=False)
    return output_prefix(tmp_path / f"c{documents}", "text")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("documents", "split_name", "working"),
    [(1, "valid", "90,0,0"), (5, "test", "90,0,0")],
)
def test_a_split_without_documents_is_refused_not_hung(
    tiny_ziya: Path, tmp_path: Path, documents: int, split_name: str, working: str
) -> None:
    prefix = corpus(tmp_path, tiny_ziya, documents)
    status, message = build(prefix, "90,8,2", tiny_ziya, tmp_path / "cache")
    assert status == 3, message
    assert message.startswith(
        f'data.split="90,8,2": the {split_name} split gets 0 of the {documents} documents of '
        f"{prefix}"
    )
    assert f'data.split="{working}"' in message
    # The suggested split really gives every built split a document.
    assert all(n is None or n > 0 for n in split_documents(working, documents))


def test_suggestion_keeps_the_splits_that_have_documents() -> None:
    assert split_documents("90,8,2", 20) == [18, 2, 0]
    assert split_documents("90,8,0", 20) == [18, 2, None]


@pytest.mark.slow
def test_a_working_split_builds_with_its_index_cache_in_the_given_folder(
    tiny_ziya: Path, tmp_path: Path
) -> None:
    prefix = corpus(tmp_path, tiny_ziya, 5)
    status, lengths = build(prefix, "90,0,0", tiny_ziya, tmp_path / "run" / "cache" / "index")
    assert status == 0, lengths
    train, valid, test = json.loads(lengths)
    assert train >= 4 and valid is None and test is None
    assert list((tmp_path / "run" / "cache" / "index").iterdir())
    assert not (tmp_path / "index-cache").exists()  # nothing written beside the data


def test_an_empty_bin_is_named(tmp_path: Path) -> None:
    prefix = str(tmp_path / "empty_text_document")
    Path(prefix + ".bin").write_bytes(b"")
    Path(prefix + ".idx").write_bytes(b"x")
    with pytest.raises(ValueError, match=rf"{prefix}\.bin is empty \(0 bytes\)"):
        parse_blend([1.0, prefix])
