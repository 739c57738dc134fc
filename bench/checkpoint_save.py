#!/usr/bin/env python3
"""Cost of checkpoint manifests (checkpoint/manifest.py): a torch_dist save with and without
one, side by side, and the verification a start does.

python bench/checkpoint_save.py [--layers 2] [--repeat 4] [--dir /tmp]

The state is what one rank of a 13B run at TP=2 DP=4 writes for `--layers` transformer layers
(hidden 5120, FFN 13824, 40 heads): its TP shard of the bf16 weights, and its 1/DP share of the
fp32 main params and Adam moments as dp_reshardable flat buckets (1.5 GiB for 2 layers). Each
variant goes through megatron's dist_checkpointing.save (torch_dist, fsynced) in one process,
in `--repeat` rounds, each variant going first in turn:

- plain: the save alone (what a save cost before manifests);
- hooked: the save with the shards checksummed as megatron's writer streams them (in a helper
  thread, while the same buffer is written; torch.save's own per-record CRC32, which torch.load
  never checks, skipped instead), then the manifest (the small files read back): what
  `training/checkpointing.save` does;
- read back: the save, then every file read back and checksummed (the alternative to the hook,
  from the page cache that has just been written).

Then `manifest.verify` of a checkpoint, from the page cache and after evicting its files from
it (posix_fadvise DONTNEED: what a resume on a fresh node reads); a start verifies in parallel,
each rank about 1/world of the bytes.

The manifest's cost is measured two ways: hooked vs plain within each round, an A/B of whole
saves (the RESULT: `RESULT manifest_overhead=<median over rounds>% goal=<5%`), and inside each
hooked save: the time its writes waited for their checksums beyond the write itself, plus
writing the manifest, over the rest of the save. The A/B is at the mercy of the neighbours on a
shared VM (the same save varies by tens of percent from one minute to the next, and the
checksum thread competes for the CPUs), so the load average is printed with it; the second
figure does not depend on the disk's mood but misses what the thread takes from others.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import zlib
from pathlib import Path

HIDDEN, FFN, TP, DP = 5120, 13824, 2, 4
GOAL_PERCENT = 5.0
GIB = 2**30


def layer_state(layers: int) -> dict:
    """Sharded state of one TP=2 DP=4 rank: bf16 weight shards and fp32 optimizer buckets."""
    import torch
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    gen = torch.Generator().manual_seed(0)
    state: dict = {}
    for i in range(layers):
        shapes = {
            "self_attention.linear_qkv.weight": (3 * HIDDEN // TP, HIDDEN),
            "self_attention.linear_proj.weight": (HIDDEN, HIDDEN // TP),
            "mlp.linear_fc1.weight": (2 * FFN // TP, HIDDEN),
            "mlp.linear_fc2.weight": (HIDDEN, FFN // TP),
        }
        numel = 0
        for name, shape in shapes.items():
            weight = torch.randn(shape, generator=gen).to(torch.bfloat16)
            key = f"decoder.layers.{i}.{name}"
            state[key] = ShardedTensor.from_rank_offsets(key, weight)
            numel += weight.numel()
        for name in ("param", "exp_avg", "exp_avg_sq"):
            flat = torch.randn(numel // DP, generator=gen)
            key = f"optimizer.layer_{i}.bucket.{name}"
            state[key] = ShardedTensor.from_rank_offsets(key, flat)
    return state


def evict(folder: Path) -> None:
    """Drop the folder's pages from the page cache (they are clean: the save fsynced them)."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_save(state: dict, folder: Path, variant: str) -> tuple[float, float]:
    """(seconds of the save, seconds of it the manifest added, measured inside)."""
    from megatron.core import dist_checkpointing

    from megatron_chimed.checkpoint import manifest

    folder.mkdir(parents=True)
    log = manifest.WriteLog()
    chimed = manifest.metadata_bytes({"iteration": 1})
    start = time.perf_counter()
    if variant == "hooked":
        with manifest.record_writes(folder, log):
            dist_checkpointing.save(state, str(folder))
    else:
        dist_checkpointing.save(state, str(folder))
    saved = time.perf_counter()
    if variant != "plain":
        manifest.write(folder, log, {"chimed.json": chimed})
    (folder / "chimed.json").write_bytes(chimed)
    end = time.perf_counter()
    if variant == "hooked":
        shards = sorted(p.name for p in folder.glob("*.distcp"))
        assert sorted(log.files) == shards, (log.files, shards)  # checksummed while written
    added = log.waited + (end - saved) if variant == "hooked" else 0.0
    return end - start, added


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()

    import torch

    from megatron_chimed.checkpoint import manifest
    from megatron_chimed.platform import destroy, initialize

    initialize(1, 1234)
    state = layer_state(args.layers)
    nbytes = sum(v.data.nbytes for v in state.values())
    work = Path(tempfile.mkdtemp(prefix="bench_ckpt_", dir=args.dir))
    variants = ("plain", "hooked", "read back")
    best = dict.fromkeys(variants, float("inf"))
    try:
        timed_save(state, work / "warmup", "plain")  # megatron's first save starts its helpers
        shutil.rmtree(work / "warmup")
        ratios, inside = [], []
        for r in range(args.repeat):
            seconds = {}
            for variant in variants[r % 3 :] + variants[: r % 3]:  # each goes first in turn
                folder = work / f"{variant.replace(' ', '_')}_{r}"
                seconds[variant], added = timed_save(state, folder, variant)
                best[variant] = min(best[variant], seconds[variant])
                if variant == "hooked":
                    inside.append(added / (seconds[variant] - added))
                if r < args.repeat - 1:
                    shutil.rmtree(folder)
            # Saves of one round share the machine's load: compare within rounds.
            ratios.append(seconds["hooked"] / seconds["plain"] - 1)
        last = work / f"hooked_{args.repeat - 1}"
        start = time.perf_counter()
        assert manifest.verify(last) == []
        warm = time.perf_counter() - start
        evict(last)
        start = time.perf_counter()
        assert manifest.verify(last) == []
        cold = time.perf_counter() - start
        start = time.perf_counter()
        for value in state.values():  # the checksum alone, as a serial cost would be
            zlib.crc32(value.data.flatten().view(torch.uint8).numpy())
        crc_alone = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
        destroy()
    print(f"state: {nbytes / GIB:.2f} GiB ({args.layers} layers of a 13B TP={TP} DP={DP} rank: "
          "bf16 weight shards, fp32 main params + Adam moments)")  # fmt: skip
    for variant in variants:
        seconds = best[variant]
        rate = nbytes / seconds / GIB
        print(f"save {variant:<10} {seconds:7.2f} s ({rate:.2f} GiB/s, best of {args.repeat})")
    print(
        f"verify     {warm:7.2f} s from the page cache ({nbytes / warm / GIB:.2f} GiB/s), "
        f"{cold:.2f} s evicted ({nbytes / cold / GIB:.2f} GiB/s), one rank"
    )
    print(
        f"crc32 of the state alone {crc_alone:.2f} s ({nbytes / crc_alone / GIB:.2f} GiB/s); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    reread = 100 * (best["read back"] / best["plain"] - 1)
    print(
        f"hooked vs plain, best of each: {100 * (best['hooked'] / best['plain'] - 1):+.1f}%; "
        f"read back vs plain: {reread:+.1f}%"
    )
    print(f"hooked vs plain per round (A/B): {', '.join(f'{100 * x:+.1f}%' for x in ratios)}")
    print(
        f"added inside each hooked save (checksum waits + manifest): "
        f"{', '.join(f'{100 * x:.1f}%' for x in inside)}"
    )
    overhead = 100 * statistics.median(ratios)
    print(f"RESULT manifest_overhead={overhead:.1f}% goal=<{GOAL_PERCENT:.0f}%")


if __name__ == "__main__":  # dist_checkpointing's spawned helper re-imports __main__
    main()
