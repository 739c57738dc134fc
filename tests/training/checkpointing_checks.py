"""Checkpoint integrity at TP=2 (2 gloo processes, one launch): manifests, corrupt and truncated
files, crafted pickles, old-format checkpoints, a full disk, resume-time config checks.

A base run of N=4 iterations saves iter 2 and 4; each check works on a copy of its checkpoints
in a run_dir of its own. Rank 0 writes the measured values to --out;
tests/training/test_checkpointing_integrity.py asserts on them.
"""

import argparse
import builtins
import errno
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_chimed import config
from megatron_chimed.checkpoint import CheckpointError, layout, manifest
from megatron_chimed.model import unwrap
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.stages.cpt import PretrainStage
from megatron_chimed.tokenizer import ZiyaTokenizer
from megatron_chimed.training import checkpointing, rng_state, save_space
from megatron_chimed.training.loop import train

N = 4


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Payload:
    """Unpickling it creates `path`: what a crafted checkpoint item could do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class FullDisk:
    """A file whose writes fail as on a full file system."""

    def __init__(self, raw) -> None:
        self.raw = raw

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.raw.close()


def old_rng_object():
    """The `rng_state` ShardedObject the previous version saved (a pickled dict)."""
    from megatron.core import parallel_state, tensor_parallel

    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
        "tp_rank": parallel_state.get_tensor_model_parallel_rank(),
    }
    return crafted_rng_object(rng)


def crafted_rng_object(data):
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(
        "rng_state", data, (parallel_state.get_tensor_model_parallel_world_size(),),
        (parallel_state.get_tensor_model_parallel_rank(),),
        replica_id=parallel_state.get_data_parallel_rank(),
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("out", "tmp", "data", "tokenizer"):
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    tmp = Path(args.tmp)
    tok = ZiyaTokenizer(args.tokenizer)
    initialize(2, 1234)
    rank0 = dist.get_rank() == 0
    lines = Lines()
    logging.getLogger("megatron_chimed.train").addHandler(lines)
    logging.getLogger("megatron_chimed.train").setLevel(logging.INFO)
    r: dict = {}

    def cfg(run_dir: Path, *extra: str):
        return config.load([
            "stage=cpt", "parallel=tp2_cpu", "training=tiny", f"run_dir={run_dir}",
            f"training.train_iters={N}", "checkpoint.save_interval=2", "training.log_interval=1",
            "training.eval_interval=0", "training.tensorboard=false", "optim.lr=2e-3",
            "optim.warmup_iters=2", f"data.blend=[1.0,{args.data}]", *extra,
        ])  # fmt: skip

    def run(run_dir: Path, *extra: str):
        c = cfg(run_dir, *extra)
        lines.lines.clear()
        return train(c, PretrainStage(c, tok), args.tokenizer)

    def error(run_dir: Path, *extra: str) -> str | None:
        try:
            run(run_dir, *extra)
        except CheckpointError as err:
            return str(err)
        return None

    def copy(name: str) -> Path:
        root = tmp / name / "checkpoints"
        if rank0:
            shutil.copytree(tmp / "base" / "checkpoints", root)
        dist.barrier()
        return root

    def params(state) -> torch.Tensor:
        return torch.cat([p.detach().flatten().float() for p in unwrap(state.model).parameters()])

    def equal_to_base(state) -> bool:
        flag = torch.tensor([float(torch.equal(params(state), base_params))])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def all_ranks(value) -> list:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out

    def on_rank0(fn) -> None:
        if rank0:
            fn()
        dist.barrier()

    def folders(root: Path) -> list[str]:
        return sorted(p.name for p in root.glob("iter_*"))

    # The base run; which files its saves read back instead of checksumming them as written.
    read_back: set[str] = set()
    real_crc = manifest.file_crc
    manifest.file_crc = lambda path: read_back.add(path.name) or real_crc(path)
    base = run(tmp / "base")
    manifest.file_crc = real_crc
    base_params = params(base)
    latest = tmp / "base" / "checkpoints" / "iter_0000004"
    r["base"] = {
        "manifest": sorted(json.loads((latest / manifest.MANIFEST).read_text())["files"]),
        "read_back": sorted(set().union(*all_ranks(sorted(read_back)))),
        "sound": manifest.verify(latest),
        "folders": folders(tmp / "base" / "checkpoints"),
    }

    # A flipped byte in a shard of latest: fallback to iter 2, then the same result; refuse.
    for name in ("flip", "refuse"):
        shard = copy(name) / "iter_0000004" / "__1_0.distcp"

        def flip(shard=shard) -> None:
            data = bytearray(shard.read_bytes())
            data[len(data) // 2] ^= 0x04
            shard.write_bytes(data)

        on_rank0(flip)
        r[name] = {"shard": str(shard)}
    resumed = run(tmp / "flip")
    r["flip"].update(
        warnings=[line for line in lines.lines if "falling back" in line],
        status=[resumed.status, resumed.iteration],
        equal=equal_to_base(resumed),
    )
    r["refuse"]["error"] = error(tmp / "refuse", "checkpoint.on_corrupt=refuse")

    # A truncated shard in a checkpoint written before manifests: named, not an EOFError.
    shard = copy("truncated") / "iter_0000004" / "__0_0.distcp"

    def truncate() -> None:
        for old in shard.parent.parent.glob(f"iter_*/{manifest.MANIFEST}"):
            old.unlink()
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    on_rank0(truncate)
    r["truncated"] = {
        "shard": str(shard),
        "error": error(tmp / "truncated", "checkpoint.on_corrupt=refuse"),
        "notices": [line for line in lines.lines if "no manifest.json" in line],
    }

    # A checkpoint as the previous version wrote it: RNG as a pickled object, no manifest.
    real_sharded = rng_state.sharded
    rng_state.sharded = lambda streams: old_rng_object()
    run(tmp / "legacy", "training.exit_after=2")
    rng_state.sharded = real_sharded
    on_rank0(lambda: (tmp / "legacy/checkpoints/iter_0000002" / manifest.MANIFEST).unlink())
    resumed = run(tmp / "legacy")
    r["legacy"] = {"status": [resumed.status, resumed.iteration], "equal": equal_to_base(resumed)}

    # Crafted pickles: as the RNG object, and in the common (non-sharded) state.
    markers = [tmp / "ran_rng", tmp / "ran_common"]
    meta = layout.read_metadata(tmp / "base" / "checkpoints" / "iter_0000002")
    rng_state.sharded = lambda streams: crafted_rng_object(Payload(markers[0]))
    checkpointing.save(tmp / "evil_rng" / "checkpoints", 2, base.model, base.optimizer,
                       base.scheduler, meta)  # fmt: skip
    rng_state.sharded = real_sharded
    real_state = checkpointing._sharded_state
    checkpointing._sharded_state = lambda *a, **k: {**real_state(*a, **k),
                                                    "extra": Payload(markers[1])}  # fmt: skip
    checkpointing.save(tmp / "evil_common" / "checkpoints", 2, base.model, base.optimizer,
                       base.scheduler, meta)  # fmt: skip
    checkpointing._sharded_state = real_state
    # megatron's save compares the ranks' common states by gathering them to rank 0, which
    # unpickles rank 1's payload there: only what the resumes do counts.
    on_rank0(lambda: [m.unlink(missing_ok=True) for m in markers])
    r["crafted"] = {
        "rng": error(tmp / "evil_rng"),
        "common": error(tmp / "evil_common"),
        "ran": [m.exists() for m in markers],
    }

    # The disk fills up while the shards are written.
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    root = copy("enospc")
    filesystem_async.open = lambda f, mode="r", *a, **k: (
        FullDisk(builtins.open(f, mode, *a, **k)) if "w" in mode else builtins.open(f, mode)
    )
    try:
        checkpointing.save(root, 5, base.model, base.optimizer, base.scheduler, meta)
        failure = None
    except CheckpointError as err:
        failure = str(err)
    finally:
        del filesystem_async.open
    r["enospc"] = {"error": failure, "folders": folders(root),
                   "latest": layout.read_latest(root).name}  # fmt: skip

    # A file system with room for 2.5 checkpoints: keep_last=2 prunes first; without, refused.
    root = copy("room")
    size = save_space.folder_bytes(root / "iter_0000004")
    real_usage = shutil.disk_usage

    def usage(path):
        used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        real = real_usage(path)
        return type(real)(real.total, real.used, int(2.5 * size) - used)

    save_space.shutil.disk_usage = usage
    try:
        checkpointing.save(root, 5, base.model, base.optimizer, base.scheduler, meta, keep_last=2)
        pruned = folders(root)
        try:
            checkpointing.save(root, 6, base.model, base.optimizer, base.scheduler, meta)
            short = None
        except CheckpointError as err:
            short = str(err)
    finally:
        save_space.shutil.disk_usage = real_usage
    rng = rng_state.sharded(rng_state.capture())
    state = checkpointing._sharded_state(base.model, base.optimizer, "dp_reshardable", False, rng)
    first = save_space.estimate(tmp / "no_checkpoints_yet", state)  # from the state's bytes
    r["room"] = {
        "pruned": pruned,
        "error": short,
        "folders": folders(root),
        "latest": layout.read_latest(root).name,
        "size": size,
        "first_estimate": first,
    }

    # Resume-time config checks (at iteration N already: nothing is trained).
    copy("mismatch")
    mismatch = tmp / "mismatch"
    r["mismatch"] = {
        "global_batch": error(mismatch, "training.global_batch_size=16"),
        "seq_length": error(mismatch, "training.seq_length=32"),
    }
    seed = run(mismatch, "seed=7")
    r["mismatch"]["seed"] = [seed.status, [x for x in lines.lines if x.startswith("seed=")]]
    lr = run(mismatch, "optim.lr=4e-3")
    max_lr = [g["max_lr"] for g in lr.optimizer.param_groups]
    r["mismatch"]["lr"] = [lr.status, lr.iteration, max_lr]

    run(tmp / "at_end", "checkpoint.save_interval=0")
    r["at_end"] = folders(tmp / "at_end" / "checkpoints")

    if rank0:
        Path(args.out).write_text(json.dumps(r, indent=2))
    destroy()


if __name__ == "__main__":  # dist_checkpointing's spawned helper re-imports __main__
    main()
