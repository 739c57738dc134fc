"""A test-only check of GPU discipline on a machine without a GPU.

Under NCCL every tensor handed to a collective must be a CUDA tensor; gloo takes host tensors.
On the CPU suite both are the CPU, so a `.cpu()` before an all-reduce, or a module created on
the host after the model was placed, goes unnoticed until the first cluster run. This guard
makes that class visible here:

- `checked_collectives(device)` wraps torch.distributed's collectives: each tensor must be on
  `device` (the compute device), or on the host when the call names the platform's host
  (gloo) group; otherwise AssertionError naming the collective and both devices.
- The compute device can be faked as `meta`: `platform.compute_device()` then answers meta, so
  code that builds its tensors "on the compute device" builds meta tensors, and any tensor
  that went through the host on the way is caught. Collectives on meta tensors are skipped
  (they are only valid in a world of one process, where every collective is the identity).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from megatron_chimed import platform
from megatron_chimed.platform import distributed as platform_distributed

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "reduce",
    "broadcast",
    "all_to_all_single",
)


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, list | tuple):
            found += [v for v in value if isinstance(v, torch.Tensor)]
    return found


@contextlib.contextmanager
def checked_collectives(device: torch.device | str) -> Iterator[list[str]]:
    """Within the block, check every collective's tensors against `device`; yields the list of
    collectives called (name@device), so a test can also assert that a collective ran."""
    device = torch.device(device)
    calls: list[str] = []
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def wrap(name: str, collective: Any) -> Any:
        def checked(*args: Any, **kwargs: Any) -> Any:
            group = kwargs.get("group")
            expected = torch.device("cpu") if platform.is_host_group(group) else device
            tensors = _tensors(args, kwargs)
            for tensor in tensors:
                if tensor.device.type != expected.type:
                    raise AssertionError(
                        f"dist.{name} got a tensor on {tensor.device}, expected {expected.type} "
                        "(NCCL takes CUDA tensors only; host tensors go over the host group)"
                    )
            calls.append(f"{name}@{expected.type}")
            if any(t.device.type == "meta" for t in tensors):
                if dist.is_initialized() and dist.get_world_size() > 1:
                    raise AssertionError("a faked meta device is only valid in a world of one")
                return None  # identity in a world of one
            return collective(*args, **kwargs)

        return checked

    try:
        for name, collective in originals.items():
            setattr(dist, name, wrap(name, collective))
        # Code asks the platform where to put tensors; it answers with the faked device.
        platform_distributed._faked_device = device
        yield calls
    finally:
        for name, collective in originals.items():
            setattr(dist, name, collective)
        platform_distributed._faked_device = None
