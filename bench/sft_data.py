"""SFT data at scale: cache build time with worker processes, and what a rank holds privately.

Writes 100K synthetic SFT records (Chinese-like text from the bundled pre-training sample's
characters, log-normal lengths with a long tail, rare characters that fall back to bytes):
an alpaca-style source of which `max_samples` draws half (so half is never encoded), and a
sharegpt-style source of dialogues (one record per assistant turn). Then, side by side:

* build time of the packed cache in one process vs `--workers` processes (default: this
  machine's share for one rank, at least 2), interleaved A, B, A, B, medians; and, as other
  jobs share the cores here, the CPU seconds of the busiest process (the reading one, or a
  worker): their ratio is the speed-up on idle cores, and the reading process's share bounds
  it whatever the worker count;
* memory of two processes that hold the loaded cache at the same time (smaps_rollup): the
  old way (each process reads the arrays into its own memory, as the `.npz` cache was loaded)
  vs the memory-mapped cache. Private = Private_Clean + Private_Dirty grown since before
  loading; PSS splits shared pages between the processes that map them.

RESULT: the larger private growth of the two memory-mapped processes, against 5% of the cache.

    .venv/bin/python bench/sft_data.py [--records 100000] [--rounds 2] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

# Only light modules here: the encoding workers start by importing this script (spawn), as they
# import the training entry point, which keeps torch out of its module-level imports too.
from megatron_chimed.data.sft import cache
from megatron_chimed.data.sft.build import build_cache
from megatron_chimed.data.sft.config import load_data_config
from megatron_chimed.data.sft.pool import default_workers
from megatron_chimed.tokenizer import ZiyaTokenizer

SEQ_LENGTH = 4096
GOAL_FRACTION = 0.05
RARE = "䶮𠀀𪚥龘靐齉爩"  # outside the tiny vocabulary: byte-fallback ids


class TextMaker:
    """Random text drawn from the pre-training sample's characters, by their frequency."""

    def __init__(self, seed: int) -> None:
        from megatron_chimed.testing.tiny_ziya import sample_texts

        chars = np.array(list("".join(sample_texts()).replace("\n", "") + RARE))
        self.chars, self.rng = chars, np.random.default_rng(seed)

    def lengths(self, count: int, median: float) -> np.ndarray:
        raw = self.rng.lognormal(np.log(median), 0.9, size=count)
        return np.clip(raw.round(), 2, 3000).astype(int)

    def texts(self, lengths: np.ndarray) -> list[str]:
        flat = "".join(self.chars[self.rng.integers(0, len(self.chars), int(lengths.sum()))])
        ends = np.cumsum(lengths)
        return [flat[a:b] for a, b in zip(ends - lengths, ends)]


def write_data(folder: Path, records: int) -> tuple[Path, Path]:
    """An alpaca JSONL of 60% of the records and a sharegpt JSONL of dialogues for the rest."""
    make = TextMaker(0)
    qa_count, dialogues = records * 6 // 10, records * 4 // 10 // 2  # 2 exchanges a dialogue
    questions = make.texts(make.lengths(qa_count, 40))
    answers = make.texts(make.lengths(qa_count, 120))
    alpaca = folder / "alpaca.jsonl"
    with open(alpaca, "w", encoding="utf-8") as f:
        for q, a in zip(questions, answers):
            row = {"instruction": q, "input": "", "output": a}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    turns = make.texts(make.lengths(dialogues * 4, 60))
    sharegpt = folder / "sharegpt.jsonl"
    with open(sharegpt, "w", encoding="utf-8") as f:
        for d in range(dialogues):
            talk = [{"from": ("human", "gpt")[k % 2], "value": turns[4 * d + k]} for k in range(4)]
            f.write(json.dumps({"conversations": talk}, ensure_ascii=False) + "\n")
    return alpaca, sharegpt


def children() -> float:
    """CPU seconds of the ended child processes (the encoding workers, once joined)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_builds(cfg, tok, folder: Path, workers: int, rounds: int) -> dict:
    """Build the cache with one process and with `workers`, interleaved; wall seconds and the
    CPU seconds of the busiest process (the reading one, or a worker on average) per build."""
    from megatron_chimed.data.sft.dataset import cache_content

    wall: dict[int, list[float]] = {1: [], workers: []}
    busiest: dict[int, list[float]] = {1: [], workers: []}
    for round_ in range(rounds):
        for count in (1, workers):
            prefix = folder / f"cache{round_}_{count}" / "sft"
            start, main_cpu, child_cpu = time.perf_counter(), time.process_time(), children()
            stamp = build_cache(cfg, tok, prefix, lambda: cache_content(cfg, tok), count)
            wall[count].append(time.perf_counter() - start)
            main_cpu, child_cpu = time.process_time() - main_cpu, children() - child_cpu
            busiest[count].append(max(main_cpu, child_cpu / count))
            print(
                f"build {count:>2} worker(s)  {wall[count][-1]:6.1f} s wall; CPU "
                f"{main_cpu:5.1f} s reading process, {child_cpu:5.1f} s workers"
            )
    same = all(
        cache.array_path(folder / "cache0_1" / "sft", n).read_bytes()
        == cache.array_path(folder / f"cache0_{workers}" / "sft", n).read_bytes()
        for n in cache.ARRAYS
    )
    median = statistics.median
    return {"stamp": stamp, "same": same,
            "wall": median(wall[1]) / median(wall[workers]),
            "cpu": median(busiest[1]) / median(busiest[workers]),
            "seconds": (median(wall[1]), median(wall[workers]))}  # fmt: skip


def smaps() -> dict[str, int]:
    """KiB per field of /proc/self/smaps_rollup."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":")
        fields[name] = int(value.split()[0])
    return fields


def hold(prefix: str, mode: str, barrier, results) -> None:
    """Load the cache (`mmap`: the dataset; `copy`: each array read into this process, as the
    .npz cache was), read every page, and report memory while the other process holds it too."""
    from megatron_chimed.data.sft.dataset import PackedSFTDataset  # torch: before measuring

    before = smaps()
    rows = 0
    if mode == "mmap":
        ds = PackedSFTDataset(prefix, SEQ_LENGTH, 0, "isolated")
        arrays = [ds.tokens, ds.loss_mask, ds.sample_offsets, ds.row_offsets]
        rows = sum(int(ds[i]["loss_mask"].sum()) for i in range(0, len(ds), 7))
    else:
        arrays = [np.load(cache.array_path(prefix, name)) for name in cache.ARRAYS]
    checksum = sum(int(a.sum(dtype=np.int64)) for a in arrays) + rows  # touches every page
    barrier.wait()
    after = smaps()
    barrier.wait()
    private = (after["Private_Clean"] + after["Private_Dirty"]
               - before["Private_Clean"] - before["Private_Dirty"])  # fmt: skip
    results.put({"checksum": checksum, "rss": after["Rss"] / 1024, "pss": after["Pss"] / 1024,
                 "shared": after["Shared_Clean"] / 1024, "private": private / 1024})  # fmt: skip


def memory(prefix: Path, mode: str) -> list[dict]:
    """What each of two processes holding the cache at once reports (`hold`)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=hold, args=(str(prefix), mode, barrier, results)) for _ in "ab"]
    for p in procs:
        p.start()
    out = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2, help="builds per side")
    ap.add_argument("--workers", type=int, default=max(2, default_workers()))
    args = ap.parse_args()
    from megatron_chimed.testing.tiny_ziya import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_tokenizer(tmp)
        tok = ZiyaTokenizer(tmp)
        alpaca, sharegpt = write_data(tmp, args.records)
        qa_count = args.records * 6 // 10
        cfg = load_data_config({"seq_length": SEQ_LENGTH, "packing": "isolated", "sources": [
            {"name": "alpaca", "format": "alpaca", "path": str(alpaca),
             "max_samples": qa_count // 2},
            {"name": "sharegpt", "format": "sharegpt", "path": str(sharegpt)}]})  # fmt: skip
        size = (alpaca.stat().st_size + sharegpt.stat().st_size) / 2**20
        print(f"data             {args.records:,} records, {size:.1f} MiB JSONL; alpaca capped at "
              f"{qa_count // 2:,} of {qa_count:,}")  # fmt: skip

        builds = time_builds(cfg, tok, tmp, args.workers, args.rounds)
        stamp, (one, many) = builds["stamp"], builds["seconds"]
        drawn = stamp["stats"]["alpaca"]
        encoded = sum(v for k, v in drawn.items() if k != "samples" and not k.startswith("drop"))
        cache_mib = sum(stamp["bytes"].values()) / 2**20
        print(
            f"build median     1 worker {one:.1f} s, {args.workers} workers {many:.1f} s wall: "
            f"x{builds['wall']:.2f}; bytes identical: {builds['same']}"
        )
        print(
            f"build CPU bound  x{builds['cpu']:.2f}: busiest process's CPU s, one vs "
            f"{args.workers} workers (the speed-up with {args.workers + 1} idle cores)"
        )
        print(f"alpaca encoded   {encoded:,} records of {qa_count:,} read (drawn before encoding)")
        print(
            f"cache            {stamp['samples']:,} samples, {stamp['rows']:,} rows, "
            f"{stamp['tokens']:,} tokens, {cache_mib:.1f} MiB"
        )

        worst = {}
        for mode in ("copy", "mmap"):
            for i, r in enumerate(memory(tmp / "cache0_1" / "sft", mode)):
                print(
                    f"memory {mode:<4} p{i}   RSS {r['rss']:6.1f} MiB, PSS {r['pss']:6.1f} MiB, "
                    f"shared {r['shared']:6.1f} MiB, private growth {r['private']:6.1f} MiB"
                )
                worst[mode] = max(worst.get(mode, 0.0), r["private"])
        print(
            f"private per rank {worst['copy']:.1f} MiB read into memory (the old .npz load) vs "
            f"{worst['mmap']:.1f} MiB memory-mapped; cache {cache_mib:.1f} MiB"
        )
        print(
            f"RESULT sft_cache_private_rss_mib={worst['mmap']:.1f} "
            f"goal=<{GOAL_FRACTION * cache_mib:.1f}"
        )


if __name__ == "__main__":
    main()
