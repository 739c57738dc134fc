#!/usr/bin/env python3
"""Export a megatron checkpoint (converted or trained) to a HF safetensors folder.

python tools/convert_megatron_to_hf.py --megatron DIR --out DIR [--max-shard-size 5GB]

--megatron is a checkpoint root (follows `latest`) or one iter_* folder, ours or one written by
Megatron-LM or Megatron-Bridge (follows their latest_checkpointed_iteration.txt). The output has
safetensors shards + index, config.json, generation_config.json and the tokenizer files;
`transformers` and vLLM load it. Runs in one process with bounded memory, without torchrun.
Its log is OUT.convert.log; a bad input is one line naming the file, exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from megatron_chimed import run_log

DTYPES = {
    "keep": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
UNITS = {"": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}


def size_in_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]B)?", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 5GB or 500MB")
    return int(match[1]) * UNITS[match[2] or ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--megatron", required=True, help="checkpoint root or iter_* folder")
    ap.add_argument("--out", required=True, help="HF folder to create")
    ap.add_argument("--dtype", default="keep", choices=sorted(DTYPES), help="default: as saved")
    ap.add_argument("--max-shard-size", type=size_in_bytes, default="5GB")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    def convert() -> object:
        # Imported once the console is set: importing megatron-core raises its warnings.
        from megatron_chimed.convert import megatron_to_hf

        return megatron_to_hf(
            args.megatron,
            args.out,
            dtype=DTYPES[args.dtype],
            max_shard_bytes=args.max_shard_size,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )

    # The log beside the output (which is written whole, then renamed into place).
    return run_log.run_tool(run_log.log_path_for(args.out, ".convert.log"), convert)


if __name__ == "__main__":
    sys.exit(main())
