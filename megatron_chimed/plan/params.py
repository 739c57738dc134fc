"""The parameters one GPU holds, and how megatron lays them out for DDP and the distributed
optimizer: the basis of the weight, gradient and optimizer bytes of a plan.

Per TP rank (megatron-core's GPTModel as model/builder.py builds it, LLaMA shape, no biases):
the vocab-parallel embedding and the untied output layer hold `padded_vocab / TP` rows each,
QKV / FC1 are column-parallel and the output projection / FC2 row-parallel (split over TP),
and the RMSNorm weights are whole on every TP rank. The RM drops the output layer and adds a
replicated hidden -> 1 head (reward/model.py).

DDP copies the parameters into one contiguous buffer per dtype, in reverse registration order
(backprop order), with the distributed optimizer's padding: every parameter starts on a
64-element boundary and every bucket ends on a multiple of lcm(DP, 128), so that it splits
into DP equal shards (megatron/core/optimizer/distrib_optimizer.py
`_compute_per_buffer_param_layout`, megatron/core/optimizer/param_layout.py). Each DP rank's
optimizer owns the real (unpadded) elements of its shard of every bucket
(`_build_model_gbuf_range`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_chimed.plan.shape import RunShape


@dataclass(frozen=True)
class Param:
    name: str
    numel: int  # on one TP rank
    tp_split: bool  # False: replicated on every TP rank (norms, the RM head)


def layer_params(shape: RunShape, i: int) -> list[Param]:
    """One decoder layer's parameters in registration order (which the layout depends on)."""
    m, t = shape.model, shape.tp
    h, d = m.hidden_size, m.head_dim
    q, kv = m.num_attention_heads * d, m.num_query_groups * d
    p = f"decoder.layers.{i}."
    proj = Param(p + "self_attention.linear_proj.weight", h * q // t, True)
    qkv = Param(p + "self_attention.linear_qkv.weight", (q + 2 * kv) * h // t, True)
    fc1 = Param(p + "mlp.linear_fc1.weight", 2 * m.ffn_hidden_size * h // t, True)  # [gate; up]
    fc2 = Param(p + "mlp.linear_fc2.weight", h * m.ffn_hidden_size // t, True)
    if shape.impl == "transformer_engine":
        # TE fuses each RMSNorm into the linear after it (LayerNormLinear registers its norm
        # weight before its own weight).
        return [
            proj,
            Param(p + "self_attention.linear_qkv.layer_norm_weight", h, False),
            qkv,
            Param(p + "mlp.linear_fc1.layer_norm_weight", h, False),
            fc1,
            fc2,
        ]
    return [
        Param(p + "input_layernorm.weight", h, False),
        proj,
        qkv,
        Param(p + "pre_mlp_layernorm.weight", h, False),
        fc1,
        fc2,
    ]


def parameters(shape: RunShape) -> list[Param]:
    """Every parameter of one TP rank, in the order of the model's `named_parameters()`."""
    m, t = shape.model, shape.tp
    h, vocab = m.hidden_size, shape.vocab_padded
    params = [Param("embedding.word_embeddings.weight", vocab * h // t, True)]
    for i in range(m.num_layers):
        params += layer_params(shape, i)
    params.append(Param("decoder.final_layernorm.weight", h, False))
    if shape.value_head:
        params.append(Param("value_head.weight", h, False))
    elif m.untie_embeddings_and_output_weights:  # tied: the output layer reads the embedding
        params.append(Param("output_layer.weight", vocab * h // t, True))
    return params


@dataclass(frozen=True)
class Bucket:
    start: int
    end: int  # padded: (end - start) % DP == 0 with the distributed optimizer
    params: tuple[tuple[int, int], ...]  # (start, end) of each parameter in the buffer


def _pad(value: int, divisor: int) -> int:
    return math.ceil(value / divisor) * divisor


def buffer_layout(shape: RunShape, numels: list[int] | None = None) -> list[Bucket]:
    """DDP's buckets over this rank's parameters (megatron's layout, restated; see above).

    Without the distributed optimizer megatron pads nothing
    (param_and_grad_buffer.py `_compute_default_per_buffer_param_layout`).
    """
    if numels is None:
        numels = [p.numel for p in parameters(shape)]
    padded, limit = shape.distributed_optimizer, shape.bucket_size
    end_divisor = math.lcm(shape.dp, 128)
    buckets: list[Bucket] = []
    bucket_start = index = 0
    members: list[tuple[int, int]] = []
    for numel in reversed(numels):
        start = _pad(index, 64) if padded else index
        members.append((start, start + numel))
        index = start + numel
        if limit is not None and index - bucket_start >= limit:
            end = _pad(index, end_divisor) if padded else index
            buckets.append(Bucket(bucket_start, end, tuple(members)))
            bucket_start = index = end
            members = []
    if members:
        end = _pad(index, end_divisor) if padded else index
        buckets.append(Bucket(bucket_start, end, tuple(members)))
    return buckets


def buffer_numel(buckets: list[Bucket]) -> int:
    """Elements of the param and grad buffers, padding included."""
    return buckets[-1].end if buckets else 0


def shard_numels(buckets: list[Bucket], dp: int) -> list[int]:
    """Real parameter elements each DP rank's optimizer owns: rank r takes the r-th of DP
    equal slices of every bucket; padding belongs to no parameter."""
    owned = [0] * dp
    for bucket in buckets:
        size = (bucket.end - bucket.start) // dp
        for r in range(dp):
            lo = bucket.start + r * size
            hi = lo + size
            owned[r] += sum(max(0, min(hi, e) - max(lo, s)) for s, e in bucket.params)
    return owned
