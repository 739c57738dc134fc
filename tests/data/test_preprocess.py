"""tools/preprocess_data.py: records (JSONL, JSON array, CSV, Parquet) -> indexed dataset round
trip, malformed lines, atomic output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_chimed.data.indexed import MalformedRecord, output_prefix, preprocess
from megatron_chimed.testing.workers import ROOT
from megatron_chimed.tokenizer import ZiyaTokenizer

TEXTS = ["高血压患者应低盐饮食。", "孩子发烧38.6℃需要吃退烧药吗？", "<human>口干<bot>查血糖"]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def preprocess_cli(src: Path, prefix: Path, tokenizer: Path, *extra: str):
    """tools/preprocess_data.py as a user runs it."""
    cmd = [sys.executable, "tools/preprocess_data.py", "--input", str(src),
           "--output-prefix", str(prefix), "--tokenizer", str(tokenizer), *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("workers", [1, 2])
def test_round_trip_of_token_ids(tiny_ziya: Path, tmp_path: Path, workers: int) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    src = write_jsonl(tmp_path / "a.jsonl", [json.dumps({"text": t}) for t in TEXTS] + [""])
    stats = preprocess([src], tmp_path / "out", tiny_ziya, workers=workers, progress=False)
    tok = ZiyaTokenizer(tiny_ziya)
    expected = [tok.encode(t) + [tok.eod] for t in TEXTS]
    dataset = IndexedDataset(output_prefix(tmp_path / "out", "text"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == expected
    assert (stats.documents, stats.tokens) == (3, sum(map(len, expected)))
    assert tok.decode(dataset[2].tolist(), skip_special=False) == TEXTS[2]


def test_malformed_line_error_names_file_and_line(tiny_ziya: Path, tmp_path: Path) -> None:
    lines = [json.dumps({"text": "好"}), json.dumps({"text": "好"}), '{"text": "断', "{}"]
    src = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(MalformedRecord, match=rf"{src}:3: not valid JSON"):
        preprocess([src], tmp_path / "out", tiny_ziya, progress=False)
    assert list(tmp_path.glob("out*")) == []  # nothing half-written is left behind
    stats = preprocess([src], tmp_path / "out", tiny_ziya, skip_bad=True, progress=False)
    assert (stats.documents, stats.skipped) == (2, 2)


def test_missing_field_is_named(tiny_ziya: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "b.jsonl", [json.dumps({"body": "x"})])
    with pytest.raises(MalformedRecord, match=rf"{src}:1: field 'text' is missing"):
        preprocess([src], tmp_path / "out", tiny_ziya, progress=False)


@pytest.mark.slow
def test_cli_exits_2_with_the_line(tiny_ziya: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "c.jsonl", ["[1, 2]"])
    proc = preprocess_cli(src, tmp_path / "o", tiny_ziya)
    assert proc.returncode == 2
    assert f"{src}:1: expected a JSON object, got list" in proc.stderr


def test_byte_order_marks_are_ignored(tiny_ziya: Path, tmp_path: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    # A BOM opens the file and a second concatenated part.
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in TEXTS]
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + f"{lines[0]}\n\ufeff{lines[1]}\n{lines[2]}\n".encode())
    stats = preprocess([src], tmp_path / "out", tiny_ziya, progress=False)
    tok = ZiyaTokenizer(tiny_ziya)
    dataset = IndexedDataset(output_prefix(tmp_path / "out", "text"))
    assert [dataset[i].tolist() for i in range(3)] == [tok.encode(t) + [tok.eod] for t in TEXTS]
    assert (stats.documents, stats.skipped) == (3, 0)


def test_invalid_utf8_names_file_and_line(tiny_ziya: Path, tmp_path: Path) -> None:
    src = tmp_path / "gbk.jsonl"
    good = json.dumps({"text": "好"}).encode()
    src.write_bytes(good + b"\n" + '{"text": "高血压"}'.encode("gbk") + b"\n" + good + b"\n")
    with pytest.raises(
        MalformedRecord, match=rf"^{src}:2: not valid UTF-8 \(byte 0xb8 at column 11\)"
    ):
        preprocess([src], tmp_path / "out", tiny_ziya, progress=False)
    stats = preprocess([src], tmp_path / "out", tiny_ziya, skip_bad=True, progress=False)
    assert (stats.documents, stats.skipped) == (2, 1)


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"", b"\n  \n", b'{"text": 1}\n'])
def test_no_documents_exits_2_naming_the_file_and_writes_nothing(
    tiny_ziya: Path, tmp_path: Path, content: bytes
) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_bytes(content)
    proc = preprocess_cli(src, tmp_path / "o", tiny_ziya, "--skip-bad")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {src}: no documents")
    assert [p.name for p in tmp_path.glob("o*")] == ["o.preprocess.log"]  # the log, no data


def test_an_input_without_documents_is_warned_about(tiny_ziya: Path, tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [json.dumps({"text": "好"})])
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    stats = preprocess([good, empty], tmp_path / "out", tiny_ziya, progress=False)
    assert stats.per_file == {str(good): 1, str(empty): 0}


def test_a_finished_output_is_kept_until_its_inputs_change(tiny_ziya: Path, tmp_path: Path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "头痛怎么办"}\n{"text": "多喝水"}\n', encoding="utf-8")
    first = preprocess([src], tmp_path / "out", tiny_ziya, progress=False)
    bin_file = Path(output_prefix(tmp_path / "out", "text") + ".bin")
    made = bin_file.stat().st_mtime_ns
    again = preprocess([src], tmp_path / "out", tiny_ziya, progress=False)
    assert again == first and bin_file.stat().st_mtime_ns == made  # kept, not redone
    with open(src, "a", encoding="utf-8") as f:
        f.write('{"text": "发烧了"}\n')
    changed = preprocess([src], tmp_path / "out", tiny_ziya, progress=False)
    assert (first.documents, changed.documents) == (2, 3)
    remade = bin_file.stat().st_mtime_ns
    forced = preprocess([src], tmp_path / "out", tiny_ziya, progress=False, force=True)
    assert forced == changed and bin_file.stat().st_mtime_ns != remade


def test_json_array_csv_and_parquet_inputs(tiny_ziya: Path, tmp_path: Path) -> None:
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    rows = [{"body": t, "n": i} for i, t in enumerate(TEXTS)]
    array = tmp_path / "a.json"
    array.write_text(json.dumps(rows[:1], ensure_ascii=False), encoding="utf-8")
    table = tmp_path / "b.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["body", "n"])
        writer.writeheader()
        writer.writerows(rows[1:2])
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(rows[2:]), parquet)
    inputs = [array, table, parquet]
    stats = preprocess(inputs, tmp_path / "out", tiny_ziya, ["body"], workers=2, progress=False)
    tok = ZiyaTokenizer(tiny_ziya)
    dataset = IndexedDataset(output_prefix(tmp_path / "out", "body"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == [
        tok.encode(t) + [tok.eod] for t in TEXTS
    ]
    assert stats.per_file == {str(p): 1 for p in inputs}
    made = Path(output_prefix(tmp_path / "out", "body") + ".bin").stat().st_mtime_ns
    assert preprocess(inputs, tmp_path / "out", tiny_ziya, ["body"], progress=False) == stats
    assert Path(output_prefix(tmp_path / "out", "body") + ".bin").stat().st_mtime_ns == made


@pytest.mark.slow
def test_cli_names_the_csv_row_and_json_keys(tiny_ziya: Path, tmp_path: Path) -> None:
    src = tmp_path / "notes.csv"
    src.write_text("title,body\n头痛,多休息\n", encoding="utf-8")
    proc = preprocess_cli(src, tmp_path / "o", tiny_ziya)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {src}:2: field 'text' is missing or not a string (the text field is set by "
        "--json-keys, or pipeline.pretrain_text_field; record has ['body', 'title'])"
    )
    assert (tmp_path / "o.preprocess.log").read_text().count(f"{src}:2: field 'text'") == 1
