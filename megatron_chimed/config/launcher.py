"""The launcher section (`conf/launcher/*.yaml`): where and how the ranks start.

A leaf beside config/schema.py (which re-exports it): no torch, nothing of ours, so the Slurm
login node (`launch/submit.py`) reads it without loading the framework.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KINDS = ("local", "torchrun", "slurm")


def default_gpu_env() -> dict[str, str]:
    """What every GPU rank gets unless the user's environment says otherwise."""
    return {
        # Sequence parallelism and TP communication overlap need kernels queued in issue order
        # on one hardware queue (Megatron-LM sets this for --sequence-parallel). Read when the
        # CUDA context is created, so it must be in the environment before the ranks start.
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
        # Growable segments instead of fixed blocks: far less fragmentation when activation
        # sizes vary (packed SFT, RM batches of K answers, generation), as Megatron-LM advises.
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        # A rank stuck in a collective aborts (and Slurm ends the job) instead of hanging forever.
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        # Free the buffers of asynchronous collectives (overlapped grad reduce / param gather)
        # when they complete, not when the caching allocator next syncs (NeMo's launch default).
        "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
        "NCCL_DEBUG": "WARN",
    }


def time_limit_seconds(limit: str) -> int | None:
    """Seconds in a Slurm --time value ("90", "30:00", "4:00:00", "1-12", "2-00:00:00");
    None for no limit."""
    if limit.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", limit)
    if not m:
        raise ValueError(f"launcher.time {limit!r} is not a Slurm time limit")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # days-hours[:minutes[:seconds]]
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:  # hours:minutes:seconds
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)  # minutes[:seconds]


@dataclass
class LauncherConfig:
    kind: str = "local"  # local | torchrun | slurm
    nodes: int = 1
    gpus_per_node: int = 0  # 0: CPU run, ranks per node come from procs_per_node
    procs_per_node: int = 1
    cpus_per_task: int = 0  # 0: leave to the cluster default
    # sbatch --mem per node: "0" is the whole node's memory (a 13B job's data loaders, pinned
    # buffers and checkpoint staging need far more than most clusters' per-CPU default); null
    # leaves it to the cluster; an --mem in sbatch_extra takes precedence.
    mem: str | None = "0"
    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"
    job_name: str = "chimed"
    signal_grace_s: int = 300  # USR1 this long before the time limit: time to checkpoint
    requeue: bool = True
    master_port: int = 29500
    workdir: str | None = None  # the job's working directory (sbatch --chdir)
    torchrun: str = "torchrun"  # command starting torchrun on the nodes
    setup: list[str] = field(default_factory=list)  # env/container lines run before training
    sbatch_extra: list[str] = field(default_factory=list)  # e.g. "--qos=high", "--exclusive"
    gpu_env: dict[str, str] = field(default_factory=default_gpu_env)  # exported if GPUs

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"launcher.kind: {self.kind!r} is not one of {KINDS}")
        for name in ("nodes", "procs_per_node", "signal_grace_s", "master_port"):
            if getattr(self, name) < 1:
                raise ValueError(f"launcher.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gpus_per_node", "cpus_per_task"):
            if getattr(self, name) < 0:
                raise ValueError(f"launcher.{name} must be >= 0, got {getattr(self, name)}")
        if self.kind != "slurm" and self.nodes != 1:
            raise ValueError(f"launcher.nodes={self.nodes} needs launcher=slurm")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.job_name):
            raise ValueError(f"launcher.job_name {self.job_name!r}: use letters, digits, _.-")
        limit = time_limit_seconds(self.time)
        # Slurm sends USR1 once less than the grace is left: a grace >= the limit would preempt
        # every start at once and requeue the job forever.
        if limit is not None and self.signal_grace_s >= limit:
            raise ValueError(
                f"launcher.signal_grace_s={self.signal_grace_s} must be below "
                f"launcher.time={self.time} ({limit} s)"
            )
        if "'" in self.torchrun:  # it is pasted into a single-quoted `bash -c` script
            raise ValueError("launcher.torchrun must not contain single quotes")

    @property
    def nproc_per_node(self) -> int:
        """Ranks per node: one per GPU, or procs_per_node on a CPU run."""
        return self.gpus_per_node or self.procs_per_node
