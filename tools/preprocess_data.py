"""JSONL -> megatron indexed dataset, with Megatron-LM's flag names.

    python tools/preprocess_data.py --input train_encyclopedia.json medical_book_zh.json \
        --output-prefix data/cmd --tokenizer ckpt/ziya/tokenizer --workers 8

writes data/cmd_text_document.{bin,idx}; blend it with `data.blend=[1.0,data/cmd_text_document]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron_chimed.data.indexed import MalformedRecord, NoDocuments, output_prefix, preprocess


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--input", nargs="+", required=True, help="JSONL files (CMD: `text`)")
    ap.add_argument("--output-prefix", required=True)
    ap.add_argument("--tokenizer", required=True, help="tokenizer.model or tokenizer.json folder")
    ap.add_argument("--json-keys", nargs="+", default=["text"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-bad", action="store_true", help="count malformed lines, go on")
    ap.add_argument("--force", action="store_true", help="redo outputs already complete")
    args = ap.parse_args(argv)
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
    except (MalformedRecord, NoDocuments, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, documents in stats.per_file.items():
        if not documents:  # likely the wrong file; the others still made a dataset
            print(f"warning: {path}: no documents", file=sys.stderr)
    for key in args.json_keys:
        print(f"wrote {output_prefix(args.output_prefix, key)}.bin/.idx")
    print(f"{stats.documents} documents, {stats.tokens} tokens, {stats.skipped} malformed skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
