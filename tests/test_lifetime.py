"""megatron_chimed/lifetime.py: a process asks to die with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from megatron_chimed.testing.processes import gone, wait_gone
from megatron_chimed.testing.workers import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_child_dies_when_its_parent_is_killed() -> None:
    # The parent starts the child, prints its pid once the child is set up, then waits; the
    # child sleeps for a minute unless the kernel kills it first.
    child = (
        "import sys, time; from megatron_chimed.lifetime import die_with_parent; "
        "die_with_parent(); print('ready', flush=True); time.sleep(60)"
    )
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {child!r}], stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\\n"
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", parent], env=ENV, stdout=subprocess.PIPE, text=True
    )
    child_pid = int(proc.stdout.readline())
    try:
        assert not gone(child_pid)
        proc.kill()
        proc.wait()
        assert wait_gone([child_pid], timeout=5) is not None
    finally:
        if not gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_parent_already_gone_means_the_signal_at_once() -> None:
    # Asked to watch a parent that is not (or no longer) the parent: the kernel would never
    # send the signal, so the process sends it to itself and dies by it.
    code = (
        "from megatron_chimed.lifetime import die_with_parent; "
        "die_with_parent(parent=1); print('survived')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL and done.stdout == ""


def test_child_setup_ignores_signals_across_exec() -> None:
    from megatron_chimed.lifetime import child_setup

    code = "import signal; print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=child_setup(ignored=(signal.SIGTERM,)),
    )
    assert done.returncode == 0 and done.stdout == "True\n"
