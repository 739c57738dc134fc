"""Packing encoded samples into rows of `seq_length + 1` tokens, and the attention they need.

Each row is the plain concatenation `<s>…</s><s>…</s>…<pad>…`; inputs are `row[:-1]` and
labels `row[1:]`, so the `</s>` closing one sample is followed by the `<s>` opening the next:
the boundary tokens of the paper ("boundaries marked by special tokens"). Two modes:

* `concat` (the paper's): one causal sequence, positions 0..S-1, samples see earlier samples.
* `isolated`: each sample attends only to itself and its positions restart at 0. The row's
  sample boundaries (`cu_seqlens`) give either a block-diagonal causal mask (megatron's local
  spec, CPU) or `PackedSeqParams` in THD format (Transformer Engine spec, GPU).

How megatron-core 0.19 takes the mask (local spec): `GPTModel.forward(..., attention_mask)`
passes a boolean tensor [b, 1, s, s] (True = masked out) down to `FusedScaleMaskSoftmax`; its
torch path applies a given mask *instead of* the default causal one, although the layer spec says
`AttnMaskType.causal`. Its fused CUDA kernel for the causal type ignores the mask, so the local
spec on a GPU needs `masked_softmax_fusion=False` for `isolated`. RoPE in GPTModel ignores
`position_ids` (it rotates by row index); isolation still holds because RoPE scores depend only
on the distance between two tokens, which the block mask keeps within one sample. TE's THD
attention restarts RoPE per sequence from `cu_seqlens` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a mask is made: the cache builder runs without it
    import torch


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sample indices into bins of total length <= capacity, first-fit decreasing.

    Longest first, ties in input order (so a seeded shuffle of the input decides them), each
    into the lowest-numbered bin with room. A max-tree over the bins' free space finds that bin
    in O(log n), which keeps a million samples within seconds.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    leaves = 1
    while leaves < max(1, len(lengths)):
        leaves *= 2
    free = [capacity] * (2 * leaves)  # free[node] = most room in any bin below node
    bins: list[list[int]] = []
    for index in order:
        need = lengths[index]
        if need > capacity:
            raise ValueError(f"sample {index}: {need} tokens do not fit in a row of {capacity}")
        node = 1
        while node < leaves:
            node = 2 * node if free[2 * node] >= need else 2 * node + 1
        slot = node - leaves
        if slot == len(bins):
            bins.append([])
        bins[slot].append(index)
        free[node] -= need
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


def layout_row(
    samples: Sequence[tuple[np.ndarray, np.ndarray]], seq_length: int, pad: int, isolated: bool
) -> dict[str, np.ndarray]:
    """tokens, labels, loss_mask, position_ids and cu_seqlens of one packed row.

    `cu_seqlens` holds the start of every sample in input positions, then `seq_length`; the
    padding after the last sample is a segment of its own, so it never widens a sample.
    """
    row = np.full(seq_length + 1, pad, dtype=np.int64)
    targets = np.zeros(seq_length + 1, dtype=np.float32)
    starts, used = [], 0
    for ids, mask in samples:
        starts.append(used)
        row[used : used + len(ids)] = ids
        targets[used : used + len(ids)] = mask
        used += len(ids)
    if used > seq_length + 1:
        raise ValueError(f"{used} tokens do not fit in a row of {seq_length + 1}")
    if not isolated:
        starts = [0]
    elif used < seq_length:
        starts.append(used)
    cu_seqlens = np.array([*starts, seq_length], dtype=np.int32)
    position_ids = np.arange(seq_length) - np.repeat(cu_seqlens[:-1], np.diff(cu_seqlens))
    return {
        "tokens": row[:-1],
        "labels": row[1:],
        "loss_mask": targets[1:],
        "position_ids": position_ids,
        "cu_seqlens": cu_seqlens,
    }


def block_causal_mask(cu_seqlens: torch.Tensor, seq_length: int) -> torch.Tensor:
    """[b, 1, s, s] boolean attention mask, True = masked out (megatron's convention), from
    `cu_seqlens` rows [b, n] padded with -1: causal inside each segment, nothing across."""
    import torch

    masks = []
    positions = torch.arange(seq_length, device=cu_seqlens.device)
    for row in cu_seqlens:
        bounds = row[row >= 0]
        segment = torch.searchsorted(bounds[1:], positions, right=True)
        same = segment[:, None] == segment[None, :]
        causal = positions[:, None] >= positions[None, :]
        masks.append(~(same & causal))
    return torch.stack(masks).unsqueeze(1)


def packed_seq_params(cu_seqlens: torch.Tensor, seq_length: int):  # -> PackedSeqParams
    """THD `PackedSeqParams` for a [b, n] batch of `cu_seqlens` (padded with -1): the rows are
    laid end to end, as the batch is flattened to one THD sequence of b * s tokens."""
    import torch
    from megatron.core.packed_seq_params import PackedSeqParams

    rows = [row[row >= 0] + i * seq_length for i, row in enumerate(cu_seqlens)]
    flat = torch.cat([rows[0]] + [r[1:] for r in rows[1:]]).to(torch.int32)
    max_seqlen = int(flat.diff().max())
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=flat,
        cu_seqlens_kv=flat,
        max_seqlen_q=max_seqlen,
        max_seqlen_kv=max_seqlen,
    )
