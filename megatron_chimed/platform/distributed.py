"""Start and stop torch.distributed and megatron's parallel state, on GPUs or on the CPU.

One entry point for every process we launch (torchrun, Slurm, tests): it reads the torchrun
environment, picks NCCL with one GPU per local rank when CUDA exists and gloo otherwise, builds
megatron's tensor/data-parallel groups and seeds the model-parallel RNG streams.
"""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megatron_chimed import lifetime
from megatron_chimed.platform import cpu_compat


@dataclass(frozen=True)
class ParallelLayout:
    """Where this process sits. DP is derived: world = TP x DP (PP is 1 for now)."""

    rank: int
    local_rank: int
    world_size: int
    tensor_parallel: int
    data_parallel: int
    device: torch.device


def validate_world(world_size: int, tensor_parallel: int) -> int:
    """Return the data-parallel size, or raise if TP cannot tile the world."""
    if tensor_parallel < 1:
        raise ValueError(f"parallel.tensor_model_parallel_size must be >= 1, got {tensor_parallel}")
    if world_size % tensor_parallel:
        raise ValueError(
            f"world size {world_size} is not divisible by "
            f"parallel.tensor_model_parallel_size={tensor_parallel}"
        )
    return world_size // tensor_parallel


def initialize(
    tensor_parallel: int = 1, seed: int = 1234, timeout_minutes: int = 30
) -> ParallelLayout:
    """Initialise torch.distributed (from torchrun's env, or a 1-process world) and megatron."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if "TORCHELASTIC_RUN_ID" in os.environ:
        # torchrun starts each rank in a session of its own: if the agent dies (kill -9, or a
        # signal it does not handle), nothing else would stop the rank, which would train on.
        lifetime.die_with_parent()
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    data_parallel = validate_world(world_size, tensor_parallel)

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        cpu_compat.apply()
        device, backend = torch.device("cpu"), "gloo"

    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if world_size == 1 and "MASTER_ADDR" not in os.environ:
            # A single process started without torchrun: an in-process store is all megatron's
            # groups need. No port is bound, and no MASTER_PORT is left in the environment for
            # child processes to inherit while this process may still hold it.
            store = dist.HashStore()
            dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
        else:
            dist.init_process_group(
                backend=backend, rank=rank, world_size=world_size, timeout=timeout
            )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel)

    seed_everything(seed)
    # Distinct streams per TP rank for dropout inside TP regions, shared ones elsewhere.
    model_parallel_cuda_manual_seed(seed)
    return ParallelLayout(rank, local_rank, world_size, tensor_parallel, data_parallel, device)


# Set only by megatron_chimed.testing.collective_guard, which fakes a device on the CPU suite.
_faked_device: torch.device | None = None


def compute_device() -> torch.device:
    """Where the model runs, and so where every tensor handed to a collective on megatron's
    groups must live: under NCCL (the GPU backend) a CPU tensor is an error at the first call."""
    if _faked_device is not None:
        return _faked_device
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_host_group: dist.ProcessGroup | None = None


def host_group() -> dist.ProcessGroup | None:
    """A gloo group over every rank, for collectives on host tensors (flags, counters) that
    must not make a round trip to the GPU; None without torch.distributed.

    Created on first use, which is itself a collective: call it on every rank at the same point
    (e.g. at start-up). A dedicated group even when the default backend is gloo, so that code
    paths are the same on CPU and GPU and a test can tell host collectives from device ones."""
    global _host_group
    if _host_group is None and dist.is_initialized():
        _host_group = dist.new_group(backend="gloo")
    return _host_group


def is_host_group(group: object) -> bool:
    return group is not None and group is _host_group


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def destroy() -> None:
    """Tear down megatron's groups and the process group; safe to call twice."""
    from megatron.core import parallel_state

    global _host_group
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    _host_group = None
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
