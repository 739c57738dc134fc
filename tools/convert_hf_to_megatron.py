#!/usr/bin/env python3
"""Convert a HF LLaMA-family folder (Ziya-13B-v2, ChiMed-GPT) to a megatron dist checkpoint.

python tools/convert_hf_to_megatron.py --hf DIR --out DIR [--dtype bfloat16] [--overwrite]

The output (OUT/latest, OUT/iter_0000000/, OUT/tokenizer/) loads at any tensor-parallel size.
Runs in one process with bounded memory (one tensor at a time), without torchrun.
Its log is OUT.convert.log; a bad input is one line naming the file, exit status 2.
"""

from __future__ import annotations

import argparse
import sys

import torch

from megatron_chimed import run_log

DTYPES = {
    "keep": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hf", required=True, help="HF folder: config.json, shards (+ index)")
    ap.add_argument("--out", required=True, help="checkpoint root to create")
    ap.add_argument("--dtype", default="keep", choices=sorted(DTYPES), help="default: as the HF")
    ap.add_argument("--target-tp", type=int, default=1, help="fail now if TP cannot split it")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    def convert() -> object:
        # Imported once the console is set: importing megatron-core raises its warnings.
        from megatron_chimed.convert import hf_to_megatron

        return hf_to_megatron(
            args.hf,
            args.out,
            dtype=DTYPES[args.dtype],
            target_tp=args.target_tp,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )

    # The log beside the output (which is written whole, then renamed into place).
    return run_log.run_tool(run_log.log_path_for(args.out, ".convert.log"), convert)


if __name__ == "__main__":
    sys.exit(main())
