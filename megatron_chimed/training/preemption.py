"""SIGTERM / SIGUSR1 / SIGINT -> checkpoint at the next step boundary, then exit 0 (Slurm requeues).

The handler only sets a flag; the loop asks `requested()` once per step, which all-reduces the
flag (MAX) so every rank stops after the same step even if the signal reached only some. A
second SIGINT (Ctrl-C twice) aborts at once: exit 130, no checkpoint.

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

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
ABORT_STATUS = 130  # what a shell reports for a process stopped by Ctrl-C
# The batch shell of launch/slurm.sbatch names this file and removes it at each start: a signal
# sent with `scancel --signal` (without --batch) reaches the ranks but never the shell, which
# learns from the file that the ranks stopped for a preemption and requeues the job.
MARKER_ENV = "CHIMED_PREEMPTED_MARKER"

_writer: tuple[Any, Any] | None = None  # (the Manager, its queue) once started


class PreemptionFlag:
    """Create on every rank, in the main thread (it may create a process group, a collective)."""

    def __init__(self) -> None:
        self.received = 0
        self.interrupted = False
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)
        shield_checkpoint_writer()
        # The flag is a host tensor: it goes over the gloo host group, never NCCL (which takes
        # CUDA tensors only), and costs no device sync.
        self.group = host_group()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGINT:
            if self.interrupted:
                # Ctrl-C twice: the user wants out now, not after a checkpoint of many GBs.
                os._exit(ABORT_STATUS)
            self.interrupted = True
        self.received = signum

    def requested(self) -> bool:
        """Whether any rank got a signal (a collective: call it on every rank)."""
        flag = torch.tensor([float(self.received)])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())


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
