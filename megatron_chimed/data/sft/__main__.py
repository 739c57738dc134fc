"""Build the packed SFT cache before a job (a large mix takes longer than ranks should wait):

python -m megatron_chimed.data.sft conf/data/sft_paper.yaml TOKENIZER_DIR --run-dir RUN_DIR

builds the cache where the SFT run with that run_dir looks for it (`RUN_DIR/cache/sft`, unless
the config's `cache_dir` names a folder).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from megatron_chimed.config.load import PACKAGE_DIR  # noqa: F401  (registers ${pkg:})
from megatron_chimed.data.sft import load_data_config, packed_sft_dataset
from megatron_chimed.data.sft.dataset import DEFAULT_CACHE_DIR
from megatron_chimed.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description="Build the packed SFT cache of a data config.")
    ap.add_argument("config", help="a conf/data/sft_*.yaml file")
    ap.add_argument("tokenizer", help="tokenizer folder (tokenizer.model or tokenizer.json)")
    ap.add_argument("--seq-length", type=int, help="override the config's seq_length")
    ap.add_argument(
        "--run-dir",
        help="the SFT run's run_dir: the cache goes to RUN_DIR/cache/sft when the config's "
        f"cache_dir is null (default without it: {DEFAULT_CACHE_DIR})",
    )
    ap.add_argument(
        "--workers",
        type=int,
        help="encoding processes (default: the config's workers, else this machine's cores)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    cfg = load_data_config(args.config)
    cfg.seq_length = args.seq_length or cfg.seq_length
    if args.workers is not None:
        cfg.workers = args.workers
        cfg.validate()
    cache_dir = Path(args.run_dir) / "cache" / "sft" if args.run_dir else DEFAULT_CACHE_DIR
    rows = packed_sft_dataset(cfg, load_tokenizer(args.tokenizer), cache_dir)
    print(f"{len(rows)} rows, non-pad fraction {rows.non_pad_fraction():.4f}: {rows.stats}")


if __name__ == "__main__":
    main()
