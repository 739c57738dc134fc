"""SIGTERM / SIGUSR1 -> checkpoint at the next step boundary, then exit 0 (Slurm requeues).

The handler only sets a flag; the loop asks `requested()` once per step, which all-reduces the
flag (MAX) so every rank stops after the same step even if the signal reached only some.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    """Create on every rank (it may create a process group, a collective)."""

    def __init__(self) -> None:
        self.received = 0
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)
        # The flag is a CPU tensor: under NCCL it needs a gloo group of its own.
        self.group = None
        if dist.is_initialized() and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.received = signum

    def requested(self) -> bool:
        """Whether any rank got a signal (a collective: call it on every rank)."""
        flag = torch.tensor([float(self.received)])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())
