"""launch/torchrun.sh on one node: 2 ranks of the probe, stopped by USR1, then resumed.

USR1 goes to the whole process tree, as Slurm's proctrack delivers a step signal (torchrun starts
each rank in its own session, so a process-group kill would miss them): torchrun must survive it
(it ignores USR1) while the ranks checkpoint and exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.launch_probe import expected_total
from tests.slurm_cluster import free_port

REPO = Path(__file__).resolve().parents[1]


def _start(run_dir: Path, steps: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "CHIMED_MODULE": "tests.launch_probe",
        "MASTER_PORT": str(free_port()),
        "TORCHRUN": f"{sys.executable} -m torch.distributed.run",
    }
    return subprocess.Popen(
        [
            str(REPO / "launch" / "torchrun.sh"),
            "2",
            f"run_dir={run_dir}",
            f"probe.steps={steps}",
            "probe.step_s=0.2",
        ],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _events(run_dir: Path, rank: int) -> list[dict]:
    lines = (run_dir / "probe" / f"rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_usr1_checkpoints_and_rerun_resumes(tmp_path: Path) -> None:
    steps = 40
    proc = _start(tmp_path, steps)
    progress = tmp_path / "probe" / "progress"
    deadline = time.monotonic() + 60
    while not (progress.exists() and int(progress.read_text()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) == 3  # torchrun (exec'd by torchrun.sh) and its two ranks
    for p in tree:
        p.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    stopped = [_events(tmp_path, r)[-1] for r in (0, 1)]
    assert [e["event"] for e in stopped] == ["checkpoint", "checkpoint"]
    at = stopped[0]["step"]
    assert 2 <= at < steps and stopped[1]["step"] == at
    assert (tmp_path / "checkpoints" / "latest").read_text() == f"step_{at:06d}.json"

    proc = _start(tmp_path, steps)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    for rank in (0, 1):
        start, done = _events(tmp_path, rank)[-2:]
        assert start["event"] == "start" and start["resumed_from"] == at
        assert start["world"] == 2 and start["allreduce"] == 3.0
        # Same total as an uninterrupted run: nothing lost or repeated across the restart.
        assert done == {"event": "done", "step": steps, "total": expected_total(steps, 2)}
