"""training/run_lock.py: one live job per run_dir; a dead job's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from megatron_chimed.testing.workers import ROOT
from megatron_chimed.training.run_lock import LOCK, RunLocked, acquire

HOLD = (
    "import sys, time; from megatron_chimed.training.run_lock import acquire; "
    "lock = acquire(sys.argv[1]); print('locked', flush=True); time.sleep(120)"
)


def _holder(run_dir: Path, job: str | None) -> subprocess.Popen:
    """Another job's rank 0: holds the lock of `run_dir` until killed."""
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    env["PYTHONPATH"] = str(ROOT)
    if job:
        env["SLURM_JOB_ID"] = job
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "locked\n"
    return proc


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_second_job_is_refused_naming_the_holder(
    tmp_path: Path, holders: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    holders.append(_holder(tmp_path, "4242"))
    recorded = json.loads((tmp_path / LOCK).read_text())
    with pytest.raises(RunLocked) as err:
        acquire(tmp_path)
    message = str(err.value)
    assert message == (
        f"{tmp_path} is in use by Slurm job 4242 on {socket.gethostname()} "
        f"(pid {holders[0].pid}, started {recorded['started']}); "
        f"if that job is gone, delete {tmp_path / LOCK} and retry"
    )
    # The refused job changed nothing: the holder's description is intact.
    assert json.loads((tmp_path / LOCK).read_text()) == recorded


def test_the_lock_of_a_killed_job_is_taken_over(
    tmp_path: Path, holders: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    dead = _holder(tmp_path, "99")
    dead.kill()  # SIGKILL: no release, its description stays in the file
    dead.wait()
    lock = acquire(tmp_path)
    assert lock.notice is not None
    assert lock.notice.startswith(f"{tmp_path}: taking over the lock of Slurm job 99 on ")
    assert f"(pid {dead.pid}, started " in lock.notice and lock.notice.endswith("which is gone")
    mine = json.loads((tmp_path / LOCK).read_text())
    assert (mine["pid"], mine["job"], mine["host"]) == (os.getpid(), None, socket.gethostname())
    lock.release()
    assert (tmp_path / LOCK).read_text() == ""  # ended normally: nothing stale to report
    again = acquire(tmp_path)
    assert again.notice is None
    again.release()


def test_a_dead_holder_on_this_host_is_stale_without_flock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A filesystem without flock (flock fails): the description alone decides.
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    gone_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_pid.wait()
    (tmp_path / LOCK).write_text(
        json.dumps({"host": socket.gethostname(), "pid": gone_pid.pid, "job": None, "started": "x"})
    )

    def no_flock(*_args: object) -> None:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr("fcntl.flock", no_flock)
    lock = acquire(tmp_path)
    assert lock.notice == (
        f"{tmp_path}: taking over the lock of a job on {socket.gethostname()} "
        f"(pid {gone_pid.pid}, started x), which is gone"
    )
    lock.release()
    # A live holder on another host cannot be checked: refused.
    (tmp_path / LOCK).write_text(
        json.dumps({"host": "elsewhere", "pid": 1, "job": "8", "started": "y"})
    )
    with pytest.raises(RunLocked, match=r"in use by Slurm job 8 on elsewhere \(pid 1, started y\)"):
        acquire(tmp_path)


def test_a_requeued_job_takes_over_its_own_lock(
    tmp_path: Path, holders: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The previous start of the same Slurm job still seems to hold it (a dead node's NFS lock).
    holders.append(_holder(tmp_path, "55"))
    monkeypatch.setenv("SLURM_JOB_ID", "55")
    lock = acquire(tmp_path)
    assert lock.notice is not None and "Slurm job 55" in lock.notice
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.slow
def test_train_refuses_a_locked_run_dir_in_one_line(tmp_path: Path, holders: list) -> None:
    holders.append(_holder(tmp_path, None))
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    done = subprocess.run(
        [sys.executable, "-m", "megatron_chimed.train", "stage=cpt", "parallel=tp1",
         f"run_dir={tmp_path}"],
        env={**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-4000:]
    refusals = [line for line in done.stderr.splitlines() if "is in use by" in line]
    assert refusals == [
        f"chimed train: {tmp_path} is in use by a job on {socket.gethostname()} "
        f"(pid {holders[0].pid}, started {json.loads((tmp_path / LOCK).read_text())['started']}); "
        f"if that job is gone, delete {tmp_path / LOCK} and retry"
    ]
    assert "Traceback" not in done.stderr
