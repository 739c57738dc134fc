"""Processes that must not outlive their parent (Linux's PR_SET_PDEATHSIG).

torchrun starts each rank in a session of its own, so when the agent dies (SIGKILL, or a signal
it does not handle) nothing reaches the ranks: they would keep training, holding GPUs and the
run_dir, with nobody to collect them. Each rank, the torchrun agent started by `chimed train`
and the checkpoint writer's Manager child therefore ask the kernel to kill them when their
parent exits. Imports no torch: it runs in helper processes that should stay small.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int | None = None, sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send `sig` to this process when its parent exits; False off Linux.

    `parent` is the pid the caller expects as parent (default: the current one). If it is no
    longer the parent once the request is in place, the parent died first and the kernel will
    never send the signal: this process sends it to itself at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    expected = os.getppid() if parent is None else parent
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != expected:
        os.kill(os.getpid(), sig)
    return True


def _ignore_and_die_with(parent: int, ignored: tuple[int, ...]) -> None:
    """A Popen preexec_fn: runs in the child between fork and exec. Ignored signals stay
    ignored across exec (and in the child's own children); the death signal request too."""
    for sig in ignored:
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent(parent)


def child_setup(ignored: tuple[int, ...] = ()) -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen: the child ignores `ignored` and dies with us."""
    parent = os.getpid()
    return lambda: _ignore_and_die_with(parent, ignored)
