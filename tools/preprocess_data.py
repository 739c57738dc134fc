"""Text records -> megatron indexed dataset, with Megatron-LM's flag names.

    python tools/preprocess_data.py --input train_encyclopedia.json medical_book_zh.json \
        --output-prefix data/cmd --tokenizer ckpt/ziya/tokenizer --workers 8

writes data/cmd_text_document.{bin,idx}; blend it with `data.blend=[1.0,data/cmd_text_document]`.
Inputs: JSON Lines (.jsonl, or a .json that is no array), JSON arrays (.json), CSV / TSV or
Parquet (.parquet, needs pyarrow); the text is each record's --json-keys field (a column).
Outputs complete for the same inputs, tokenizer and keys are kept (PREFIX.preprocess.json);
--force redoes them. The log is PREFIX.preprocess.log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron_chimed import run_log
from megatron_chimed.data.indexed import MalformedRecord, NoDocuments, output_prefix, preprocess


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--input", nargs="+", required=True, help="JSONL / JSON / CSV / TSV / Parquet files"
    )
    ap.add_argument("--output-prefix", required=True)
    ap.add_argument("--tokenizer", required=True, help="tokenizer.model or tokenizer.json folder")
    ap.add_argument(
        "--json-keys", nargs="+", default=["text"], help="the text field (column) of a record"
    )
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-bad", action="store_true", help="count malformed lines, go on")
    ap.add_argument("--force", action="store_true", help="redo outputs already complete")
    args = ap.parse_args(argv)
    with run_log.command_log(f"{args.output_prefix}.preprocess.log"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        stats = preprocess(
            args.input,
            args.output_prefix,
            args.tokenizer,
            args.json_keys,
            args.workers,
            skip_bad=args.skip_bad,
            force=args.force,
        )
    except (MalformedRecord, NoDocuments, FileNotFoundError, ImportError) as err:
        run_log.echo(f"error: {err}", err=True)
        return 2
    for path, documents in stats.per_file.items():
        if not documents:  # likely the wrong file; the others still made a dataset
            run_log.echo(f"warning: {path}: no documents", err=True)
    for key in args.json_keys:
        run_log.echo(f"wrote {output_prefix(args.output_prefix, key)}.bin/.idx")
    run_log.echo(
        f"{stats.documents} documents, {stats.tokens} tokens, {stats.skipped} malformed skipped"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
