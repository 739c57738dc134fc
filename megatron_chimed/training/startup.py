"""Signals between the start of a training process and its first step (the start-up window).

Start-up builds the model, loads a checkpoint and the data: minutes for 13B. A Ctrl-C there
must not wait for the first step only to write a checkpoint of nothing, nor be ignored, nor end
in tracebacks. From `guard()` (the first thing the trainer does) until the loop's first step
(training/preemption.py `PreemptionFlag.started`):

* the first SIGINT raises `StartupInterrupted` where the main thread is; the entry point reports
  it in one line (STARTUP_MESSAGE) and exits 130 (launch/rank_errors.py);
* a second SIGINT exits at once (130), whatever the first one's unwinding is doing;
* SIGTERM / SIGUSR1 (a preemption, a time limit) are kept and honoured at the first step, as
  during training: the job checkpoints and requeues.

Imports no torch: the trainer installs it before its heavy imports.
"""

from __future__ import annotations

import os
import signal

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
ABORT_STATUS = 130  # what a shell reports for a process stopped by Ctrl-C
STARTUP_MESSAGE = "interrupted during start-up; nothing to save"


class StartupInterrupted(Exception):
    """Ctrl-C before the first training step."""

    def __init__(self) -> None:
        super().__init__(STARTUP_MESSAGE)


class _State:
    pending = 0  # a TERM / USR1 received during start-up, for the first step
    interrupted = False


def guard() -> None:
    """Install the start-up handlers (main thread)."""
    _State.pending, _State.interrupted = 0, False
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)


def _on_signal(signum: int, _frame: object) -> None:
    if signum == signal.SIGINT:
        interrupt()
    else:
        _State.pending = signum


def interrupt() -> None:
    """The first Ctrl-C of the window: raise; the second: exit now, no unwinding."""
    if _State.interrupted:
        os._exit(ABORT_STATUS)
    _State.interrupted = True
    raise StartupInterrupted()


def interrupted() -> bool:
    """Whether a Ctrl-C ended the start-up (an error after it is its consequence)."""
    return _State.interrupted


def take_pending() -> int:
    """The TERM / USR1 received during start-up (0: none), handed to the training loop once."""
    signum, _State.pending = _State.pending, 0
    return signum
