#!/usr/bin/env python3
"""Write a tiny random LLaMA in Ziya-13B-v2's file layout, tokenizer included, for tests/demos.

python tools/make_tiny_ziya.py --out DIR [--safetensors] [--dtype float32] [--shards 3]
"""

from __future__ import annotations

import argparse

from megatron_chimed.testing.tiny_ziya import make_tiny_ziya


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to create (must not exist)")
    ap.add_argument("--safetensors", action="store_true", help="safetensors shards, not .bin")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = make_tiny_ziya(
        args.out, safetensors=args.safetensors, dtype=args.dtype, shards=args.shards, seed=args.seed
    )
    print(out)


if __name__ == "__main__":
    main()
