"""The one way we start ranks on this node: `python -m torch.distributed.run` (torchrun).

`chimed train|smoke|eval|gpu-check` re-launch themselves with it and `chimed pipeline` runs each
stage with it; launch/torchrun.sh (one node, by hand) and the Slurm job script start torchrun
from the shell with the same environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import psutil

from megatron_chimed import lifetime
from megatron_chimed.config.schema import default_gpu_env


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


CTRL_C = "Ctrl-C: saving a checkpoint at the next step and exiting; press Ctrl-C again to abort"
# The signals this launcher relays to the ranks. torchrun's agent must not act on them: its own
# handling sends the signal on, SIGKILLs the ranks 30 s later whether or not their checkpoint is
# written, and prints a traceback per rank. It handles the signals that its --signals-to-handle
# option lists (torch >= 2.9; PET_SIGNALS_TO_HANDLE in the environment) and ignores the others
# when they are ignored on entry, as this launcher arranges.
RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
AGENT_SIGNALS = {"PET_SIGNALS_TO_HANDLE": "SIGHUP,SIGQUIT"}


class _Relay:
    """This process's handler of RELAYED while the ranks run.

    Ranks that checkpoint on a signal (`preemptible`): TERM and USR1 go on to them, and they
    checkpoint at the next step and exit 0. The first Ctrl-C goes on as TERM (an INT of their
    own, should they get one too, would count twice); a second one stops everything at once.
    Other ranks, or none started yet: any of these signals stops everything at once. The ranks
    are torchrun's children, each in a session of its own, and torchrun is in a process group
    of its own: the terminal's Ctrl-C reaches neither directly."""

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
            for process in [*ranks, self.agent]:  # SIGKILL: nothing left to print a traceback
                with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                    process.kill()
            return
        if signum == signal.SIGINT:
            self.interrupted = True
            print(CTRL_C, file=sys.stderr, flush=True)
            signum = signal.SIGTERM
        for rank in ranks:
            with contextlib.suppress(psutil.NoSuchProcess):
                rank.send_signal(signum)


def torchrun(module: str, nproc: int, args: Sequence[str], *, preemptible: bool = False) -> int:
    """Run the ranks to completion; their exit status, or 128 + the signal that stopped them.

    `preemptible`: the ranks checkpoint and exit 0 on SIGTERM / SIGUSR1 (the trainer). Signals
    to this process are relayed (see _Relay); torchrun's agent ignores them and dies with this
    process, and the ranks with the agent (platform.initialize)."""
    env = {**torchrun_env(), **AGENT_SIGNALS}
    agent = subprocess.Popen(
        torchrun_command(module, nproc, args),
        env=env,
        # A process group of its own: a terminal's Ctrl-C reaches this process alone, whatever
        # signals the installed torchrun handles itself.
        process_group=0,
        # Safe here: the launcher has started no thread.
        preexec_fn=lifetime.child_setup(ignored=RELAYED),
    )
    relay = _Relay(agent, preemptible)
    previous = {sig: signal.signal(sig, relay) for sig in RELAYED}
    try:
        status = agent.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + relay.stopped_by if relay.stopped_by else status
