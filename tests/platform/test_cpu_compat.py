"""Canaries for the CPU compatibility layer.

Each patch covers one megatron-core site. Its canary runs that site with the patch left out, in
a fresh process, and must fail the known way. When a canary starts passing, megatron-core has
fixed the site: delete the patch. The model tests show the patched sites work.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from megatron_chimed.platform import cpu_compat
from megatron_chimed.testing.workers import ROOT, free_port

pytestmark = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="the layer is only applied without CUDA"
)


@pytest.mark.slow
@pytest.mark.parametrize("patch", cpu_compat.PATCHES, ids=lambda p: p.name)
def test_unpatched_site_still_fails(patch: cpu_compat.Patch) -> None:
    code = (
        "from megatron_chimed.platform import cpu_compat\n"
        f"cpu_compat.apply(without={patch.name!r})\n{patch.canary}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CANARY_PORT": str(free_port())}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0, (
        f"{patch.site}: works without the patch now; delete {patch.name} from cpu_compat.PATCHES"
    )
    assert re.search(patch.expect, proc.stderr), proc.stderr[-2000:]


def test_every_patch_names_its_site() -> None:
    names = [p.name for p in cpu_compat.PATCHES]
    assert len(names) == len(set(names))
    assert all(p.site and p.canary for p in cpu_compat.PATCHES)


def test_tensor_type_patch_is_scoped_to_megatron_optimizer_callers() -> None:
    """`Tensor.type` keeps torch's answer for everyone but megatron's optimizer dtype checks."""
    import types

    import torch

    cpu_compat.apply()
    t = torch.zeros(1, dtype=torch.bfloat16)
    assert t.type() == "torch.BFloat16Tensor"
    asked_by_megatron = types.FunctionType(
        (lambda x: x.type()).__code__, {"__name__": "megatron.core.optimizer.distrib_optimizer"}
    )
    assert asked_by_megatron(t) == "torch.cuda.BFloat16Tensor"
    assert t.type(torch.float32).dtype == torch.float32  # a cast is still a cast


@pytest.mark.slow
def test_the_expected_torch_optimizer_warning_is_not_printed_on_cpu() -> None:
    """On CPU torch's AdamW is the design, so megatron's warning that TE and Apex are missing
    (printed up to 4 times per rank) is noise; `apply` silences exactly that warning."""
    code = "from megatron_chimed.platform import cpu_compat; cpu_compat.apply(); "
    code += "import megatron.core.optimizer"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Apex are not installed" not in done.stderr
