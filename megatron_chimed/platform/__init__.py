"""Process-level platform: torch.distributed, megatron parallel state, CPU compatibility."""

from megatron_chimed.platform.distributed import (
    ParallelLayout,
    compute_device,
    destroy,
    host_group,
    initialize,
    is_host_group,
    seed_everything,
    validate_world,
)

__all__ = [
    "ParallelLayout",
    "compute_device",
    "destroy",
    "host_group",
    "initialize",
    "is_host_group",
    "seed_everything",
    "validate_world",
]
