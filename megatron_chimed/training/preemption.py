"""SIGTERM / SIGUSR1 / SIGINT -> checkpoint at the next step boundary, then exit 0 (Slurm requeues).

The handler only sets a flag; the loop asks `poll()` once per step, which all-reduces the
flag (MAX) so every rank stops after the same step even if the signal reached only some. The
all-reduce runs in the background (a host collective that would otherwise make every rank wait
for the slowest one at every step), so a signal received during step n stops the run after
step n + 1: worst case two steps, then the checkpoint save (a step of the 13B model takes
seconds, Slurm's grace before the kill is `launcher.signal_grace_s`, 300 s by default). A
second SIGINT (Ctrl-C twice) aborts at once: exit 130, no checkpoint. Until the first step
(`started`), the flag keeps the start-up rules of training/startup.py: a Ctrl-C while the model
is built or a checkpoint loaded ends the run with one line, nothing saved; a TERM or USR1 that
arrived during start-up is honoured at the first step.

The signal may reach every process of the job (Slurm's `scancel --signal` without --batch, Slurm
preemption, a process-group kill), helper processes included. megatron-core's checkpoint writer
collects its results through a multiprocessing Manager child (filesystem_async's module-global
queue) that it starts at the first save; a spawned child has the default action for these
signals, so the signal killed it and the preemption save died with BrokenPipeError.
`PreemptionFlag` starts that queue itself, first, with the signals blocked: the child keeps the
blocked mask across spawn's exec, so only the rank acts on them.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_chimed import lifetime
from megatron_chimed.platform import host_group
from megatron_chimed.training import startup
from megatron_chimed.training.startup import ABORT_STATUS, SIGNALS

__all__ = ["ABORT_STATUS", "SIGNALS", "PreemptionFlag", "mark_preempted"]
# The batch shell of launch/slurm.sbatch names this file and removes it at each start: a signal
# sent with `scancel --signal` (without --batch) reaches the ranks but never the shell, which
# learns from the file that the ranks stopped for a preemption and requeues the job.
MARKER_ENV = "CHIMED_PREEMPTED_MARKER"

_writer: tuple[Any, Any] | None = None  # (the Manager, its queue) once started


class PreemptionFlag:
    """Create on every rank, in the main thread (it may create a process group, a collective)."""

    def __init__(self) -> None:
        self.received = startup.take_pending()
        self.interrupted = False
        self.starting = True  # until the loop's first step: Ctrl-C ends the start-up
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)
        shield_checkpoint_writer()
        # The flag is a host tensor: it goes over the gloo host group, never NCCL (which takes
        # CUDA tensors only), and costs no device sync.
        self.group = host_group()
        self._pending: tuple[Any, torch.Tensor] | None = None  # poll's all-reduce in flight

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGINT:
            if self.starting:
                startup.interrupt()  # raises: nothing trained, nothing to save
            if self.interrupted:
                # Ctrl-C twice: the user wants out now, not after a checkpoint of many GBs.
                os._exit(ABORT_STATUS)
            self.interrupted = True
        self.received = signum

    def started(self) -> None:
        """The loop is about to run its first step: a Ctrl-C now checkpoints at the next one."""
        self.starting = False

    def requested(self) -> bool:
        """Whether any rank got a signal (a collective: call it on every rank)."""
        flag = torch.tensor([float(self.received)])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    def poll(self) -> bool:
        """The loop's check after each step, without waiting for the other ranks: whether any
        rank had a signal when the previous poll ran (a collective: call it on every rank at
        the same steps).

        Each poll starts an asynchronous all-reduce of the flag and returns the result of the
        one the previous poll started, complete by then. The first poll blocks instead, so a
        signal from start-up still stops the run after the first step. Later, a signal received
        during step n stops it after step n + 1. A host tensor on the gloo group: no device
        sync either."""
        if not dist.is_initialized():
            return bool(self.received)
        if self._pending is None:
            stop = self.requested()
        else:
            work, flag = self._pending
            work.wait()
            stop = bool(flag.item())
            self._pending = None
        if not stop:
            flag = torch.tensor([float(self.received)])
            work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
            self._pending = (work, flag)
        return stop

    def drain(self) -> None:
        """Wait for the all-reduce the last poll started (every rank, when the loop ends), so
        that none is in flight when the next run starts or the process group goes."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None


def shield_checkpoint_writer() -> None:
    """Start megatron's checkpoint-writer results queue now (once per process): its Manager
    child blind to SIGNALS and killed by the kernel if this process dies."""
    global _writer
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if _writer is not None and filesystem_async._results_queue is _writer[1]:
        return
    from multiprocessing import get_context, resource_tracker
    from multiprocessing.managers import SyncManager

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        # The resource tracker first (every spawned child reports to it): starting it unblocks
        # SIGINT and SIGTERM in this thread on return, as it ignores them itself.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        manager = SyncManager(ctx=get_context("spawn"))  # megatron's default context
        # A SIGKILLed rank must not leave the Manager behind (nor, through the tracker's pipe
        # that the Manager keeps open, the tracker).
        manager.start(initializer=lifetime.die_with_parent, initargs=(os.getpid(),))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    _writer = (manager, manager.Queue())
    filesystem_async._results_queue = _writer[1]


def mark_preempted() -> None:
    """Leave the batch shell's marker (rank 0, after the preemption checkpoint is complete)."""
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{os.getpid()}\n")
