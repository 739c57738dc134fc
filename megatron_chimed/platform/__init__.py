"""Process-level platform: torch.distributed, megatron parallel state, CPU compatibility."""

from megatron_chimed.platform.distributed import (
    ParallelLayout,
    destroy,
    initialize,
    seed_everything,
    validate_world,
)

__all__ = ["ParallelLayout", "destroy", "initialize", "seed_everything", "validate_world"]
