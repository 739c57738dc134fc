"""One live job per run_dir: global rank 0 holds an flock on RUN_DIR/.lock while the job runs.

Two jobs on one run_dir would interleave their checkpoints, `latest` and metrics. The lock file
holds a JSON description of its holder (host, pid, Slurm job id, start time), so that a refused
job can name it, and is emptied when the holder ends normally. A lock nobody holds is taken over
with a one-line notice: the kernel drops an flock when its holder dies, however it dies. Beyond
the flock, two cases take over from a live-looking lock:
- the holder is on this host and its pid is gone (the flock is then held by a forked child of
  the dead holder, a data-loader worker about to exit, or the filesystem has no flock at all,
  as some Lustre mounts);
- the holder has our SLURM_JOB_ID: a requeued job restarting. Slurm never runs two starts of one
  job at once, and a dead node's lock on NFS can outlive it by minutes.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LOCK = ".lock"
log = logging.getLogger("megatron_chimed.train")


class RunLocked(RuntimeError):
    """Another live job holds the run_dir; the message (one line) names it."""


@dataclass
class RunLock:
    path: Path
    file: IO[str]
    notice: str | None  # the takeover notice, when a dead job's lock was taken over

    def release(self) -> None:
        """Empty the description (the job ended normally: no stale holder to report) and let go."""
        self.file.seek(0)
        self.file.truncate()
        self.file.flush()
        # Explicitly: forked children (data-loader workers) share the descriptor, and closing
        # ours alone would leave the flock held until the last of them exits.
        with contextlib.suppress(OSError):
            fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def _me() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job": os.environ.get("SLURM_JOB_ID"),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _describe(holder: dict) -> str:
    job = f"Slurm job {holder['job']}" if holder.get("job") else "a job"
    host, pid, started = holder.get("host"), holder.get("pid"), holder.get("started")
    return f"{job} on {host} (pid {pid}, started {started})"


def _read_holder(file: IO[str]) -> dict | None:
    file.seek(0)
    try:
        holder = json.loads(file.read() or "null")
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: assume the worst
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    return True


def _stale(holder: dict, me: dict) -> bool:
    """Whether a holder that still seems to hold the lock is known to be gone."""
    if me["job"] and holder.get("job") == me["job"]:
        return True
    return holder.get("host") == me["host"] and not _pid_alive(holder.get("pid"))


def acquire(run_dir: str | Path) -> RunLock:
    """Lock `run_dir` for this process; RunLocked names the live holder. Global rank 0 only."""
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    # a+: create the file if needed without emptying a holder's description.
    file = open(path, "a+", encoding="utf-8")  # held until release(): the life of the job
    free: bool | None
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        free = True
    except BlockingIOError:
        free = False
    except OSError:
        free = None  # no flock on this filesystem
    holder, me = _read_holder(file), _me()
    if free is None:
        free = holder is None  # the description alone decides
    if not free and not (holder is not None and _stale(holder, me)):
        file.close()
        who = _describe(holder) if holder else "another job (still starting)"
        raise RunLocked(
            f"{path.parent} is in use by {who}; if that job is gone, delete {path} and retry"
        )
    notice = None
    if holder is not None:
        notice = f"{path.parent}: taking over the lock of {_describe(holder)}, which is gone"
        log.warning(notice)
    file.seek(0)
    file.truncate()  # in append mode, the write below then lands at offset 0
    file.write(json.dumps(me) + "\n")
    file.flush()
    os.fsync(file.fileno())
    return RunLock(path, file, notice)


def hold(run_dir: str | Path) -> RunLock | None:
    """On every rank (a collective): global rank 0 takes the lock, every rank raises RunLocked
    if it is refused. Rank 0 gets the lock to release at the end; the others None."""
    import torch.distributed as dist

    from megatron_chimed.platform import host_group

    lock, refusal = None, [None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            lock = acquire(run_dir)
        except RunLocked as err:
            refusal = [str(err)]
    if dist.is_initialized():
        dist.broadcast_object_list(refusal, src=0, group=host_group())
    if refusal[0]:
        raise RunLocked(refusal[0])
    return lock
