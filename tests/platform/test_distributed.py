"""platform/distributed.py: ranks started by torchrun die with its agent.

torchrun starts each rank in a session of its own, so nothing reaches them when the agent is
SIGKILLed: without platform.initialize's death-signal request they would train on, orphaned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from megatron_chimed.launch.torchrun import torchrun_command
from megatron_chimed.testing.processes import gone, wait_gone
from megatron_chimed.testing.workers import ROOT

pytestmark = pytest.mark.distributed


def test_ranks_die_when_the_torchrun_agent_is_killed(tmp_path: Path) -> None:
    cmd = torchrun_command(
        str(ROOT / "tests" / "platform" / "rank_lifetime.py"), 2, [str(tmp_path)], script=True
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    agent = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    pid_files = [tmp_path / f"rank{rank}.pid" for rank in (0, 1)]
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not all(p.exists() for p in pid_files):
            assert agent.poll() is None and time.monotonic() < deadline, "ranks did not start"
            time.sleep(0.2)
        ranks = [int(p.read_text()) for p in pid_files]
        assert not any(gone(pid) for pid in ranks)
        agent.kill()
        agent.wait()
        assert wait_gone(ranks, timeout=5) is not None
    finally:
        if agent.poll() is None:
            agent.kill()
        for pid in ranks:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
