"""Build the packed SFT cache before a job (a large mix takes longer than ranks should wait):

python -m megatron_chimed.data.sft conf/data/sft_paper.yaml TOKENIZER_DIR [--seq-length N]
"""

from __future__ import annotations

import argparse
import logging

from megatron_chimed.data.sft import load_data_config, packed_sft_dataset
from megatron_chimed.tokenizer import ZiyaTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description="Build the packed SFT cache of a data config.")
    ap.add_argument("config", help="a conf/data/sft_*.yaml file")
    ap.add_argument("tokenizer", help="folder with tokenizer.model and added_tokens.json")
    ap.add_argument("--seq-length", type=int, help="override the config's seq_length")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    cfg = load_data_config(args.config)
    cfg.seq_length = args.seq_length or cfg.seq_length
    rows = packed_sft_dataset(cfg, ZiyaTokenizer(args.tokenizer))
    print(f"{len(rows)} rows, non-pad fraction {rows.non_pad_fraction():.4f}: {rows.stats}")


if __name__ == "__main__":
    main()
