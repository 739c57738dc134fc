"""The convention both CPU patch layers (`cpu_compat.py` for training, `cpu_inference_compat.py`
for the dynamic inference engine) are written in: a table of `Patch` rows, each naming the
megatron-core site it covers and a canary that runs the site unpatched and must fail, and one
way to apply a table. A leaf: it imports nothing of ours."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Patch:
    """One redirected attribute: ``module.attr = replacement``."""

    module: str
    attr: str
    replacement: Callable[..., Any] | Any
    site: str
    canary: str  # python source that exercises the unpatched site and must raise
    # a regex of what the unpatched site says (CUDA wheel without a driver, or a CPU-only wheel)
    expect: str = "NVIDIA driver|not compiled with CUDA"

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attr}"

    def target(self) -> Any:
        """The module, or a class inside one (`torch.Tensor`)."""
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError:
            parent, _, name = self.module.rpartition(".")
            return getattr(importlib.import_module(parent), name)


def apply_patches(
    patches: tuple[Patch, ...], originals: dict[str, Any], without: str | None = None
) -> None:
    """Set every row's replacement (all but the one named `without`: the canaries), keeping
    what it replaced in `originals` under the row's name.

    Every target is imported before any is patched, so that a module importing a patched name
    (fused_softmax takes get_default_causal_mask by name) holds the original until its own row
    replaces it: each row then covers its site on its own."""
    targets = [patch.target() for patch in patches]
    for patch, target in zip(patches, targets):
        if patch.name != without:
            originals[patch.name] = getattr(target, patch.attr)
            setattr(target, patch.attr, patch.replacement)


class NullEvent:
    """Stands in for torch.cuda.Event: timing on CPU is measured with wall clocks instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait(self, *args: Any, **kwargs: Any) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0
