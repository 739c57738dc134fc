"""SIGTERM / SIGUSR1 -> checkpoint at the next step boundary, then exit 0 (Slurm requeues).

The handler only sets a flag; the loop asks `requested()` once per step, which all-reduces the
flag (MAX) so every rank stops after the same step even if the signal reached only some.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from megatron_chimed.platform import host_group

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    """Create on every rank (it may create a process group, a collective)."""

    def __init__(self) -> None:
        self.received = 0
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)
        # The flag is a host tensor: it goes over the gloo host group, never NCCL (which takes
        # CUDA tensors only), and costs no device sync.
        self.group = host_group()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.received = signum

    def requested(self) -> bool:
        """Whether any rank got a signal (a collective: call it on every rank)."""
        flag = torch.tensor([float(self.received)])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())
