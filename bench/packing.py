"""SFT packing: how full are the 4096-token rows, and how fast is the first-fit packer?

Lengths come from the bundled SFT sample (encoded with the tiny tokenizer, as the sample is
small) plus a synthetic CMD-like distribution: log-normal with a median of ~150 tokens and a long
tail, clipped to one row. Reported: the non-padding fraction of the packed rows and of naive
per-sample padding to 4096, and packer throughput. Goal: packed non-pad fraction >= 0.97.

    .venv/bin/python bench/packing.py [--samples 200000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from megatron_chimed.data.sft.config import load_data_config
from megatron_chimed.data.sft.dataset import packed_sft_dataset
from megatron_chimed.data.sft.packing import first_fit
from megatron_chimed.testing.tiny_ziya import make_tiny_ziya
from megatron_chimed.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SEQ_LENGTH = 4096
GOAL = 0.97


def sample_lengths() -> list[int]:
    """Token counts of the bundled SFT sample, as the SFT data pipeline encodes it."""
    cfg = load_data_config(ROOT / "conf" / "data" / "sft_sample.yaml")
    cfg.seq_length = SEQ_LENGTH
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(make_tiny_ziya(Path(tmp) / "tiny"))
        rows = packed_sft_dataset(cfg, tokenizer, Path(tmp) / "cache")
        return np.diff(rows.sample_offsets).tolist()


def cmd_like_lengths(count: int, seed: int = 0) -> list[int]:
    """Log-normal, median 150 tokens, sigma 0.8 (a long tail of ~1-2k-token answers)."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=np.log(150), sigma=0.8, size=count)
    return np.clip(lengths.round(), 16, SEQ_LENGTH + 1).astype(int).tolist()


def fill(lengths: list[int], rows: int) -> float:
    return sum(lengths) / (rows * (SEQ_LENGTH + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200_000, help="synthetic samples")
    args = ap.parse_args()

    os.chdir(ROOT)  # the sample config's paths are relative to the repository
    lengths = sample_lengths() + cmd_like_lengths(args.samples)
    start = time.perf_counter()
    bins = first_fit(lengths, SEQ_LENGTH + 1)
    seconds = time.perf_counter() - start

    packed = fill(lengths, len(bins))
    naive = fill(lengths, len(lengths))
    print(
        f"samples           {len(lengths):>10,}  (median {int(np.median(lengths))} tokens, "
        f"p99 {int(np.percentile(lengths, 99))}, max {max(lengths)})"
    )
    print(f"rows packed       {len(bins):>10,}  vs {len(lengths):,} padded one by one")
    print(f"non-pad packed    {packed:>10.4f}")
    print(f"non-pad naive     {naive:>10.4f}")
    print(f"packer            {len(lengths) / seconds:>10,.0f} samples/s ({seconds:.2f} s)")
    print(f"RESULT packed_non_pad_fraction={packed:.4f} goal={GOAL}")


if __name__ == "__main__":
    main()
