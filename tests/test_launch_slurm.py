"""The rendered sbatch on a real two-node Slurm cluster (loopback, tests/slurm_cluster.py).

launch/submit.py renders and submits a 2-node job, one rank per node over gloo, running the
stand-in trainer tests/launch_probe.py; a second job is preempted with USR1 mid-run, requeues
itself and resumes from its checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launch_probe import expected_total
from tests.slurm_cluster import SlurmCluster, ensure_slurm_installed, free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = ensure_slurm_installed()
    if reason:
        pytest.skip(reason)
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    slurm.start()
    try:
        yield slurm
    finally:
        slurm.stop()


def _submit(cluster: SlurmCluster, run_dir: Path, *overrides: str, wait: bool) -> str:
    """launch/submit.py for a 2-node CPU job of the probe; returns the job id.

    Probe settings are `+probe.*`: appended keys, which a full Hydra compose accepts."""
    cmd = [sys.executable, str(REPO / "launch" / "submit.py"), "--module", "tests.launch_probe",
           "launcher=slurm", "launcher.nodes=2", "launcher.gpus_per_node=0",
           "launcher.procs_per_node=1", f"launcher.master_port={free_port()}",
           f"launcher.workdir={REPO}", "launcher.time=00:10:00", "launcher.signal_grace_s=60",
           f"launcher.setup=[source {REPO}/.venv/bin/activate]", f"run_dir={run_dir}",
           *overrides, *(["--wait"] if wait else [])]
    done = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()[0]


def _events(run_dir: Path, rank: int) -> list[dict]:
    lines = (run_dir / "probe" / f"rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_two_node_job(cluster: SlurmCluster, tmp_path: Path) -> None:
    t0 = time.monotonic()
    job = _submit(cluster, tmp_path, "+probe.steps=3", wait=True)
    print(f"2-node job {job}: submit to finish {time.monotonic() - t0:.1f} s")
    info = cluster.job(job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0"
    assert info["NodeList"] == "node[1-2]"
    assert (tmp_path / "launch.sbatch").read_text().startswith("#!/bin/bash")

    logs = tmp_path / "logs"
    assert sorted(p.name for p in logs.iterdir()) == [
        f"chimed-{job}-node0.log", f"chimed-{job}-node1.log", f"chimed-{job}.log"]
    batch = (logs / f"chimed-{job}.log").read_text()
    assert "master node1:" in batch and "training ended with status 0" in batch
    for rank, node in ((0, "node1"), (1, "node2")):
        start, done = _events(tmp_path, rank)
        # One rank per node: the node rank is SLURM_NODEID, both see world size 2.
        assert start["world"] == 2 and start["allreduce"] == 3.0
        assert start["node_rank"] == rank and start["slurm_nodeid"] == str(rank)
        assert start["slurmd_nodename"] == node and start["local_rank"] == 0
        assert done == {"event": "done", "step": 3, "total": expected_total(3, 2)}
        assert f"probe rank {rank}: {{'event': 'done'" in \
            (logs / f"chimed-{job}-node{rank}.log").read_text()
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000003.json"


def test_usr1_requeues_and_resumes(cluster: SlurmCluster, tmp_path: Path) -> None:
    steps = 30
    t0 = time.monotonic()
    job = _submit(cluster, tmp_path, f"+probe.steps={steps}", "+probe.step_s=0.3", wait=False)
    progress = tmp_path / "probe" / "progress"
    deadline = time.monotonic() + 60
    while not (progress.exists() and int(progress.read_text() or 0) >= 3):
        assert time.monotonic() < deadline, f"probe made no progress: {cluster.job(job)}"
        time.sleep(0.2)
    t_signal = time.monotonic()
    # Exactly what `#SBATCH --signal=B:USR1@grace` does near the time limit: USR1 to the batch
    # shell only.
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    info = cluster.wait_job(job, ("PENDING",), timeout=30)
    t_requeued = time.monotonic()
    assert info["Restarts"] == "1"
    cluster.wait_job(job, ("RUNNING",), timeout=60)
    t_restarted = time.monotonic()
    info = cluster.wait_job(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=90)
    t_done = time.monotonic()
    print(f"preempted job {job}: signal at {t_signal - t0:.1f} s, pending again after "
          f"{t_requeued - t_signal:.1f} s, restarted after {t_restarted - t_requeued:.1f} s more, "
          f"finished {t_done - t_restarted:.1f} s later; total {t_done - t0:.1f} s")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0"
    assert info["Restarts"] == "1"

    for rank in (0, 1):
        first, stopped, second, done = _events(tmp_path, rank)
        assert first["event"] == "start" and first["restart"] == 0
        assert stopped["event"] == "checkpoint" and stopped["signal"] == 10  # SIGUSR1
        at = stopped["step"]
        assert 3 <= at < steps
        # The requeued start resumed from the checkpoint and ended where an uninterrupted run
        # would have: every step counted exactly once.
        assert second["event"] == "start" and second["restart"] == 1
        assert second["resumed_from"] == at and second["slurm_nodeid"] == str(rank)
        assert done == {"event": "done", "step": steps, "total": expected_total(steps, 2)}
    assert (tmp_path / "checkpoints" / f"step_{at:06d}.json").exists()
    batch = (tmp_path / "logs" / f"chimed-{job}.log").read_text()
    assert batch.count(f"job {job} start") == 2
    assert "USR1: forwarding" in batch and "requeueing" in batch
    assert "training ended with status 0 (preempted=0)" in batch
