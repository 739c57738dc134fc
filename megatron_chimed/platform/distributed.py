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
        # A single process started without torchrun still needs a store for megatron's groups.
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel)

    seed_everything(seed)
    # Distinct streams per TP rank for dropout inside TP regions, shared ones elsewhere.
    model_parallel_cuda_manual_seed(seed)
    return ParallelLayout(rank, local_rank, world_size, tensor_parallel, data_parallel, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def destroy() -> None:
    """Tear down megatron's groups and the process group; safe to call twice."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
