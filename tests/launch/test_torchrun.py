"""launch/torchrun.sh on one node: 2 ranks of the probe, stopped by USR1, then resumed; and
launch/torchrun.py's launcher (`chimed train`) stopped by Ctrl-C, once and twice.

USR1 goes to the whole process tree, as Slurm's proctrack delivers a step signal (torchrun starts
each rank in its own session, so a process-group kill would miss them): torchrun must survive it
(it ignores USR1) while the ranks checkpoint and exit 0. A terminal's Ctrl-C goes to the
launcher's process group, which holds the launcher alone: torchrun's agent and each rank have
groups of their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from megatron_chimed.launch.torchrun import CTRL_C
from megatron_chimed.testing.launch_probe import expected_total
from megatron_chimed.testing.processes import wait_gone
from megatron_chimed.testing.workers import free_port

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]


def _start(run_dir: Path, steps: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "CHIMED_MODULE": "megatron_chimed.testing.launch_probe",
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


LAUNCHER = (
    "import sys; from megatron_chimed.launch.torchrun import torchrun; "
    "sys.exit(torchrun('megatron_chimed.testing.launch_probe', 2, sys.argv[1:], preemptible=True))"
)


class _Launcher:
    """`chimed train`'s launcher on the probe, in a session of its own (a terminal's foreground
    process group); its output, and the ranks', collected line by line."""

    def __init__(self, run_dir: Path, step_s: float) -> None:
        self.run_dir, self.lines = run_dir, []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, f"run_dir={run_dir}", "probe.steps=40",
             f"probe.step_s={step_s}"],
            cwd=REPO,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout))
        self.reader.start()

    def wait_for(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, f"no {what}: {''.join(self.lines)}"
            time.sleep(0.02)

    def progress(self) -> int:
        path = self.run_dir / "probe" / "progress"
        return int(path.read_text()) if path.exists() else 0

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def finish(self) -> tuple[int, str]:
        status = self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        return status, "".join(self.lines)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "term"])
def test_launcher_signal_checkpoints_and_exits_0(tmp_path: Path, sig: int) -> None:
    launcher = _Launcher(tmp_path, step_s=0.2)
    launcher.wait_for(lambda: launcher.progress() >= 2, "training progress")
    launcher.signal_group(sig)
    status, out = launcher.finish()
    assert status == 0, out
    assert out.count(CTRL_C) == (1 if sig == signal.SIGINT else 0)
    assert "Traceback" not in out and "SignalException" not in out
    stopped = [_events(tmp_path, r)[-1] for r in (0, 1)]
    assert [e["event"] for e in stopped] == ["checkpoint", "checkpoint"]
    # The ranks got the signal (the first Ctrl-C is relayed as the INT it is), and stopped at
    # the same step.
    assert [e["signal"] for e in stopped] == [sig, sig]
    assert 2 <= stopped[0]["step"] == stopped[1]["step"] < 40


def test_second_ctrl_c_aborts_at_once(tmp_path: Path) -> None:
    # Slow steps: the ranks would act on the first Ctrl-C seconds later, at a step boundary.
    launcher = _Launcher(tmp_path, step_s=3)
    launcher.wait_for(lambda: launcher.progress() >= 1, "training progress")
    ranks = [e["pid"] for e in (_events(tmp_path, r)[0] for r in (0, 1))]
    launcher.signal_group(signal.SIGINT)
    launcher.wait_for(lambda: any(CTRL_C in line for line in launcher.lines), "Ctrl-C notice")
    t0 = time.monotonic()
    launcher.signal_group(signal.SIGINT)
    status, out = launcher.finish()
    assert time.monotonic() - t0 < 2  # not after the next step (3 s), nor torchrun's 30 s
    assert status == 130, out
    assert out.count(CTRL_C) == 1
    assert "Traceback" not in out and "SignalException" not in out
    events = [e["event"] for r in (0, 1) for e in _events(tmp_path, r)]
    assert events == ["start", "start"]  # no checkpoint
    assert not (tmp_path / "checkpoints" / "latest").exists()
    assert wait_gone(ranks, timeout=5) is not None
