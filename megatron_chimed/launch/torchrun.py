"""The one way we start ranks on this node: `python -m torch.distributed.run` (torchrun).

`chimed train|smoke|eval|gpu-check` re-launch themselves with it and `chimed pipeline` runs each
stage with it; launch/torchrun.sh (one node, by hand) and the Slurm job script start torchrun
from the shell with the same environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from megatron_chimed import lifetime
from megatron_chimed.config.launcher import default_gpu_env
from megatron_chimed.launch.rank_main import ERROR_FILE_ENV, read_report
from megatron_chimed.training.startup import STARTUP_MESSAGE


def torchrun_command(
    module: str, nproc: int, args: Sequence[str], *, script: bool = False
) -> list[str]:
    """`python -m module args` (or `python module args` when `script`: a file path) on `nproc`
    local ranks; --standalone picks a free port, so two jobs on one node never collide."""
    entry = [module] if script else ["-m", module]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", *entry, *args]  # fmt: skip


def torchrun_env() -> dict[str, str]:
    """The GPU settings a Slurm job exports (config/schema.py default_gpu_env), unless the user
    set them: they are read when each rank creates its CUDA context, too late to set inside."""
    return {**default_gpu_env(), **os.environ}


CTRL_C = "Ctrl-C: stopping (checkpoint at the next step once training runs); Ctrl-C again aborts"
# The signals this launcher relays to the ranks. torchrun's agent must not act on them: its own
# handling sends the signal on, SIGKILLs the ranks 30 s later whether or not their checkpoint is
# written, and prints a traceback per rank. It handles the signals that its --signals-to-handle
# option lists (torch >= 2.9; PET_SIGNALS_TO_HANDLE in the environment) and ignores the others
# when they are ignored on entry, as this launcher arranges.
RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
AGENT_SIGNALS = {"PET_SIGNALS_TO_HANDLE": "SIGHUP,SIGQUIT"}
RANK_MAIN = "megatron_chimed.launch.rank_main"  # every rank's entry: logging, one-line errors
# After a rank reported an error: how long the others may take to end on their own before they
# are stopped (one still waiting in a collective for the failed rank never would).
REPORT_GRACE_S = 5.0
POLL_S = 0.1


def _kill(agent: subprocess.Popen) -> None:
    """SIGKILL torchrun's agent, then its ranks: nothing left to print a failure report."""
    try:
        ranks = psutil.Process(agent.pid).children()
    except psutil.NoSuchProcess:
        ranks = []
    for process in [agent, *ranks]:
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            process.kill()


class _Relay:
    """This process's handler of RELAYED while the ranks run.

    Ranks that checkpoint on a signal (`preemptible`): TERM, USR1 and the first Ctrl-C (as the
    INT it is) go on to them; during training they checkpoint at the next step and exit 0,
    during start-up a Ctrl-C ends the run at once (training/startup.py). A second Ctrl-C stops
    everything at once. Other ranks, or none started yet: any of these signals stops everything
    at once. The ranks are torchrun's children, each in a session of its own, and torchrun is in
    a process group of its own: the terminal's Ctrl-C reaches neither directly."""

    def __init__(self, agent: subprocess.Popen, preemptible: bool) -> None:
        self.agent, self.preemptible = agent, preemptible
        self.interrupted = False
        self.stopped_by = 0  # the signal that made us kill everything

    def __call__(self, signum: int, _frame: object) -> None:
        try:
            ranks = psutil.Process(self.agent.pid).children()
        except psutil.NoSuchProcess:
            ranks = []
        if not (self.preemptible and ranks) or (signum == signal.SIGINT and self.interrupted):
            self.stopped_by = signum
            _kill(self.agent)
            return
        if signum == signal.SIGINT:
            self.interrupted = True
            print(CTRL_C, file=sys.stderr, flush=True)
        for rank in ranks:
            with contextlib.suppress(psutil.NoSuchProcess):
                rank.send_signal(signum)


class _Runs:
    interrupted = 0  # launches a Ctrl-C reached (a sweep stops after one)
    report = ""  # the last launch's reported error line ("" when none)


def interrupted_runs() -> int:
    """How many `torchrun` calls of this process a Ctrl-C reached."""
    return _Runs.interrupted


def last_report() -> str:
    """The error line the ranks of the last `torchrun` call reported ("" when none)."""
    return _Runs.report


def _wait(agent: subprocess.Popen, error_file: Path) -> int:
    """The agent's exit status; once a rank reported an error, the others get REPORT_GRACE_S
    to end before everything is stopped."""
    reported_at = None
    while True:
        try:
            return agent.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        if reported_at is None and error_file.exists():
            reported_at = time.monotonic()
        if reported_at is not None and time.monotonic() - reported_at > REPORT_GRACE_S:
            _kill(agent)
            return agent.wait()


def torchrun(
    module: str,
    nproc: int,
    args: Sequence[str],
    *,
    preemptible: bool = False,
    name: str = "chimed",
) -> int:
    """Run the ranks to completion; their exit status, or 128 + the signal that stopped them.

    `preemptible`: the ranks checkpoint and exit 0 on SIGTERM / SIGUSR1 (the trainer). Signals
    to this process are relayed (see _Relay); torchrun's agent ignores them and dies with this
    process, and the ranks with the agent (platform.initialize). Each rank runs `module` through
    launch/rank_main.py: a user error or a start-up Ctrl-C in the ranks is printed here, once,
    as `name: <line>`, and its status returned (2, or 130)."""
    scratch = Path(tempfile.mkdtemp(prefix="chimed-launch-"))
    error_file = scratch / "error.json"
    env = {**torchrun_env(), **AGENT_SIGNALS, ERROR_FILE_ENV: str(error_file)}
    if nproc > 1:  # what torchrun sets then, without its banner saying so
        env.setdefault("OMP_NUM_THREADS", "1")
    try:
        agent = subprocess.Popen(
            torchrun_command(RANK_MAIN, nproc, [module, *args]),
            env=env,
            # A process group of its own: a terminal's Ctrl-C reaches this process alone,
            # whatever signals the installed torchrun handles itself.
            process_group=0,
            # Safe here: the launcher has started no thread.
            preexec_fn=lifetime.child_setup(ignored=RELAYED),
        )
        relay = _Relay(agent, preemptible)
        previous = {sig: signal.signal(sig, relay) for sig in RELAYED}
        try:
            status = _wait(agent, error_file)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        report = read_report(error_file)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if relay.interrupted or relay.stopped_by == signal.SIGINT:
        _Runs.interrupted += 1
    _Runs.report = report[1] if report else ""
    if relay.stopped_by:
        if relay.stopped_by == signal.SIGINT and not relay.interrupted and preemptible:
            print(f"{name}: {STARTUP_MESSAGE}", file=sys.stderr, flush=True)
        return 128 + relay.stopped_by
    if report is not None:
        report_status, message = report
        prefix = "" if message.startswith(f"{name}:") else f"{name}: "
        print(prefix + message, file=sys.stderr, flush=True)
        return report_status
    return status
