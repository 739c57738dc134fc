"""Canaries for the dynamic engine's CPU patches (platform/cpu_inference_compat.py), the same
convention as test_cpu_compat.py: each patch's canary runs its site with that patch left out,
in a fresh process, and must fail the known way. That the patched engine generates the static
engine's tokens is tests/generation/test_dynamic.py's and test_generation_tp.py's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from megatron_chimed.platform import cpu_inference_compat
from megatron_chimed.testing.workers import ROOT, free_port

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the layer is only applied without CUDA"
)


@pytest.mark.slow
@pytest.mark.parametrize("patch", cpu_inference_compat.PATCHES, ids=lambda p: p.name)
def test_unpatched_site_still_fails(patch) -> None:
    code = (
        "from megatron_chimed.platform import cpu_compat, cpu_inference_compat\n"
        "cpu_compat.apply()\n"
        f"cpu_inference_compat.apply(without={patch.name!r})\n{patch.canary}\n"
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
        f"{patch.site}: works without the patch now; delete {patch.name} from "
        "cpu_inference_compat.PATCHES"
    )
    assert re.search(patch.expect, proc.stderr), proc.stderr[-2000:]


def test_every_patch_names_its_site_once() -> None:
    names = [p.name for p in cpu_inference_compat.PATCHES]
    assert len(names) == len(set(names))
    assert all(p.site and p.canary for p in cpu_inference_compat.PATCHES)


def test_pin_memory_patch_is_scoped_to_megatron_inference_callers() -> None:
    import types

    cpu_inference_compat.apply()
    t = torch.zeros(2)
    asked_by_megatron = types.FunctionType(
        (lambda x: x.pin_memory()).__code__, {"__name__": "megatron.core.inference.contexts.x"}
    )
    assert asked_by_megatron(t) is t
    with pytest.raises(RuntimeError):  # everyone else still gets torch's answer: no device
        t.pin_memory()


def test_paged_attention_equals_dense_causal_attention() -> None:
    """Two requests, one prefilling 3 tokens after 2 cached ones and one decoding its 6th
    token, through a block table that interleaves their blocks, against plain causal
    attention on each request's whole sequence."""
    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, block = 4, 2, 8, 4
    seqs = [
        torch.randn(5, kv_heads, 2, dim, generator=gen),
        torch.randn(6, kv_heads, 2, dim, generator=gen),
    ]
    queries = [torch.randn(5, heads, dim, generator=gen), torch.randn(6, heads, dim, generator=gen)]
    # Past each request's keys: an earlier request's keys (large, finite), which must not count.
    cache = torch.full((2, 6, block, kv_heads, dim), 1e4)
    table = torch.tensor([[4, 1], [0, 5]], dtype=torch.int32)
    for r, seq in enumerate(seqs):
        for pos in range(seq.size(0)):
            blk = table[r, pos // block]
            cache[0, blk, pos % block], cache[1, blk, pos % block] = seq[pos, :, 0], seq[pos, :, 1]
    new = [3, 1]  # request 0 prefills its last 3 tokens, request 1 decodes its last one
    q = torch.cat([queries[0][-3:], queries[1][-1:]]).unsqueeze(1)
    cu_q = torch.tensor([0, 3, 4], dtype=torch.int32)
    lengths = torch.tensor([5, 6], dtype=torch.int32)
    attn = type("A", (), {"softmax_scale": None})()
    out = cpu_inference_compat.paged_attention(
        attn, q, cache[0], cache[1], 3, 6, cu_q, None, lengths, table, False
    ).squeeze(1)
    expected = []
    for r, seq in enumerate(seqs):
        k = seq[:, :, 0].repeat_interleave(2, dim=1).transpose(0, 1)
        v = seq[:, :, 1].repeat_interleave(2, dim=1).transpose(0, 1)
        full = torch.nn.functional.scaled_dot_product_attention(
            queries[r].transpose(0, 1), k, v, is_causal=True
        ).transpose(0, 1)
        expected.append(full[-new[r] :])
    torch.testing.assert_close(out, torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_the_kv_pool_starts_finite() -> None:
    """`paged_attention` reads whole blocks, so the pool must hold no NaN where nothing was
    written yet: the context's `torch.empty` zero-fills (a masked NaN poisons attention)."""
    from megatron.core.inference.contexts import dynamic_context

    cpu_inference_compat.apply()
    shape = (2, 3, 64, 4, 16)
    torch.full(shape, float("nan"))  # freed at once: memory the next allocation of this size reuses
    assert torch.empty(shape).isnan().any()  # what torch's own `empty` hands back here
    torch.full(shape, float("nan"))
    pool = dynamic_context.torch.empty(shape)
    like = dynamic_context.torch.empty_like(pool)
    assert not pool.any() and not like.any()
