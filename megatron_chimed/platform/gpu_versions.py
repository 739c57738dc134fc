"""Versions of the GPU software stack, and the combinations known not to work together.

`chimed gpu-check` prints `versions()` and fails on `check_gpu_stack()`; training start-up calls
`check_gpu_stack()` too, so a job with an unusable stack stops in its first second instead of
running for days on a slower attention kernel.

The main trap is Transformer Engine with flash-attn: TE accepts only a range of flash-attn
versions and, outside it, silently stops using flash-attn (a warning in one rank's log). With
`model.attention_backend=flash` megatron disables TE's other backends, so no attention kernel is
left; with `auto` the run is slower and uses more memory than planned. The ranges below are read
from TE's source at each release (`_flash_attn_version_required` / `_flash_attn_max_version` in
`transformer_engine/pytorch/attention.py` up to 2.1, `FlashAttentionUtils.version_required` /
`max_version` in `transformer_engine/pytorch/attention/dot_product_attention/utils.py` after).
Where TE is installed, its own constants take precedence over this table.

Nothing here imports megatron-core, Transformer Engine or flash-attn unless asked to: reading
package metadata is enough, and it works when an import would fail (a TE built for another
torch fails at import, which `check_gpu_stack` reports too).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata

from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class FlashAttnRange:
    """The flash-attn versions one range of TE releases accepts (flash-attn 2.x)."""

    te_from: str  # the first TE release with this range
    minimum: str
    maximum: str | None  # None: no upper bound
    max_inclusive: bool = True
    # TE 2.15-2.18 compare flash-attn's public version: the local part of a GitHub-release
    # build (`2.8.3+cu12torch2.8cxx11abiTRUE`) is dropped. Earlier releases compare it, and a
    # local version sorts above its public one, so such a build of the maximum is rejected.
    public_only: bool = False
    minimum_blackwell: str | None = None  # compute capability >= 10.0


TE_FLASH_ATTN_RANGES: tuple[FlashAttnRange, ...] = (
    FlashAttnRange("1.0", "1.0.6", None),
    FlashAttnRange("1.3", "2.0.6", None),
    FlashAttnRange("1.7", "2.0.6", "2.5.8"),
    FlashAttnRange("1.11", "2.0.6", "2.6.3"),
    FlashAttnRange("1.12", "2.1.1", "2.6.3"),
    FlashAttnRange("2.0", "2.1.1", "2.7.3", minimum_blackwell="2.7.3"),
    FlashAttnRange("2.1", "2.1.1", "2.7.4.post1", minimum_blackwell="2.7.3"),
    FlashAttnRange("2.6", "2.1.1", "2.8.1", minimum_blackwell="2.7.3"),
    FlashAttnRange("2.10", "2.1.1", "2.8.3", minimum_blackwell="2.7.3"),
    FlashAttnRange("2.15", "2.1.1", "2.8.3", public_only=True, minimum_blackwell="2.7.3"),
    # TE main after 2.18: an exclusive bound, local part compared again.
    FlashAttnRange("2.19", "2.1.1", "2.8.4", max_inclusive=False, minimum_blackwell="2.7.3"),
)

PACKAGES = {
    "torch": "torch",
    "megatron_core": "megatron-core",
    "transformer_engine": "transformer-engine",
    "transformer_engine_torch": "transformer-engine-torch",
    "flash_attn": "flash-attn",
    "flash_attn_3": "flash-attn-3",
    "apex": "apex",
    "cudnn_wheel": "nvidia-cudnn-cu12",
    "cudnn_wheel_cu13": "nvidia-cudnn-cu13",
}


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    """The NVIDIA driver, from nvidia-smi (torch does not expose it)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def versions() -> dict[str, object]:
    """Python, torch (and the CUDA it was built for), driver, cuDNN, megatron-core, TE,
    flash-attn, apex; and the first GPU's name, memory and compute capability."""
    import torch

    found: dict[str, object] = {"python": sys.version.split()[0]}
    found.update({key: package_version(dist) for key, dist in PACKAGES.items()})
    found["torch_cuda"] = torch.version.cuda
    found["cuda_available"] = torch.cuda.is_available()
    found["cudnn_torch"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    found["driver"] = _driver_version() if torch.cuda.is_available() else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found["gpu"] = props.name
        found["gpu_count"] = torch.cuda.device_count()
        found["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        found["compute_capability"] = f"{props.major}.{props.minor}"
    return found


def te_flash_attn_range(te_version: str) -> FlashAttnRange | None:
    """The flash-attn range TE `te_version` accepts, from the table (None before TE 1.0)."""
    release = Version(Version(te_version).base_version)
    chosen = None
    for entry in TE_FLASH_ATTN_RANGES:
        if release >= Version(entry.te_from):
            chosen = entry
    return chosen


def _installed_te_range(te_version: str) -> FlashAttnRange | None:
    """TE's own constants, when TE imports: newer than any table, and exactly what runs."""
    try:
        from transformer_engine.pytorch.attention.dot_product_attention.utils import (
            FlashAttentionUtils as fa,
        )
    except Exception:  # any import failure: fall back to the table
        return None
    checker = getattr(fa, "is_version_supported", None)
    exclusive = checker is not None and not checker(fa.max_version, Version("0"))
    table = te_flash_attn_range(te_version)
    return FlashAttnRange(
        te_from="installed",
        minimum=str(fa.version_required),
        maximum=str(fa.max_version),
        max_inclusive=not exclusive,
        # Not visible in TE's constants: how it compares is in its code, as in the table.
        public_only=table.public_only if table else False,
        minimum_blackwell=str(getattr(fa, "version_required_blackwell", "")) or None,
    )


def describe(entry: FlashAttnRange, blackwell: bool = False) -> str:
    minimum = entry.minimum_blackwell if blackwell and entry.minimum_blackwell else entry.minimum
    if entry.maximum is None:
        return f">= {minimum}"
    return f">= {minimum}, {'<=' if entry.max_inclusive else '<'} {entry.maximum}"


def flash_attn_problem(
    te_version: str,
    flash_attn_version: str,
    compute_capability: tuple[int, int] | None = None,
    accepted: FlashAttnRange | None = None,
) -> str | None:
    """Why TE `te_version` will not use flash-attn `flash_attn_version`, or None if it will."""
    entry = accepted or te_flash_attn_range(te_version)
    if entry is None:
        return None
    try:
        found = Version(flash_attn_version)
    except InvalidVersion:
        return f"flash-attn version {flash_attn_version!r} is not a valid version number"
    if found.major >= 3:
        return None  # flash-attn 3 / 4 are separate packages with their own checks in TE
    compared = Version(found.public) if entry.public_only else found
    blackwell = compute_capability is not None and compute_capability >= (10, 0)
    minimum = Version(
        entry.minimum_blackwell if blackwell and entry.minimum_blackwell else entry.minimum
    )
    too_new = entry.maximum is not None and (
        compared > Version(entry.maximum)
        or (not entry.max_inclusive and compared == Version(entry.maximum))
    )
    if minimum <= compared and not too_new:
        return None
    why = ""
    local = flash_attn_version.partition("+")[2]  # as written (Version lower-cases it)
    if (
        too_new
        and local
        and not entry.public_only
        and Version(found.public) <= Version(entry.maximum)
    ):
        why = (
            f" (TE compares the local part '+{local}' too, and a local build sorts "
            f"above {found.public})"
        )
    return (
        f"transformer-engine {te_version} does not accept flash-attn {flash_attn_version}: "
        f"it takes flash-attn {describe(entry, blackwell)}{why}. TE then runs without "
        "flash-attn (slower, more memory), and with model.attention_backend=flash no attention "
        "backend is left. Install a flash-attn in that range, or a transformer-engine whose "
        "range includes this flash-attn."
    )


def check_gpu_stack(
    te_version: str | None = None,
    flash_attn_version: str | None = None,
    compute_capability: tuple[int, int] | None = None,
) -> list[str]:
    """Problems of the GPU stack, one sentence each naming the versions involved; [] if none.

    Without arguments the installed packages (and the first GPU) are checked, with TE's own
    accepted range when TE imports; with arguments, exactly those versions against the table.
    """
    detect = te_version is None and flash_attn_version is None
    accepted = None
    if detect:
        te_version = package_version("transformer-engine")
        flash_attn_version = package_version("flash-attn")
        compute_capability = compute_capability or _compute_capability()
    problems: list[str] = []
    if te_version and detect:
        error = _te_import_error()
        if error:
            problems.append(
                f"transformer-engine {te_version} is installed but fails to import: {error}"
            )
        else:
            accepted = _installed_te_range(te_version)
    if te_version and flash_attn_version:
        problem = flash_attn_problem(te_version, flash_attn_version, compute_capability, accepted)
        if problem:
            problems.append(problem)
    return problems


def _compute_capability() -> tuple[int, int] | None:
    import torch

    return torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None


def _te_import_error() -> str | None:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as err:  # an ABI mismatch raises ImportError, OSError or RuntimeError
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None
