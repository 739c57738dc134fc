"""(a) The planner's parameter, gradient and optimizer bytes equal what megatron allocates.

The tiny model is built, wrapped in megatron's DDP and given the distributed optimizer as
training does (training/optim.py), on the CPU, and its buffers and optimizer state are counted.
The 13B-shaped 2-layer model (~1.1B parameters with its embeddings) is built on the `meta`
device, at TP=2 through a stand-in TP group (construction only reads the group's size and
rank), and megatron's own layout and shard code is run on its parameters for several DP sizes.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from megatron_chimed.config import load
from megatron_chimed.plan import params
from megatron_chimed.plan.memory import state_bytes
from megatron_chimed.plan.shape import run_shape

SHAPE_13B_2L = ["model=ziya_13b_v2", "model.num_layers=2", "model.transformer_impl=local"]


@pytest.fixture(scope="module", autouse=True)
def megatron_world():
    from megatron_chimed.platform import destroy, initialize

    initialize(tensor_parallel=1)
    yield
    destroy()


class StandInGroup:
    """What GPTModel's constructor asks of its TP group: size and rank."""

    def __init__(self, size: int, rank: int) -> None:
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


@contextmanager
def tensor_parallel(size: int, rank: int):
    from megatron.core import parallel_state

    real = parallel_state._TENSOR_MODEL_PARALLEL_GROUP
    parallel_state._TENSOR_MODEL_PARALLEL_GROUP = StandInGroup(size, rank)
    try:
        yield
    finally:
        parallel_state._TENSOR_MODEL_PARALLEL_GROUP = real


def meta_model(overrides: list[str], tp: int, rank: int = 0) -> torch.nn.Module:
    from megatron_chimed.model import build_model, unwrap

    cfg = load(overrides)
    with tensor_parallel(tp, rank), torch.device("meta"):
        return unwrap(build_model(cfg.model, cfg.parallel, "bf16"))


@pytest.mark.parametrize("tp,rank", [(1, 0), (2, 0), (2, 1)])
def test_13b_two_layer_parameters_per_tp_rank(tp: int, rank: int) -> None:
    overrides = [*SHAPE_13B_2L, f"parallel.tensor_model_parallel_size={tp}"]
    model = meta_model(overrides, tp, rank)
    built = [(name, p.numel()) for name, p in model.named_parameters()]
    planned = [(p.name, p.numel) for p in params.parameters(run_shape(load(overrides)))]
    assert planned == built
    total = sum(n for _, n in built)
    # embedding + output layer: 39424 padded rows / TP x 5120; 2 layers of 4h^2 + 3hf over TP;
    # 5 norm weights whole on every rank.
    layers = 2 * (4 * 5120**2 + 3 * 5120 * 13824)
    assert total == (2 * 39424 * 5120 + layers) // tp + 5 * 5120
    assert total == {1: 1_038_115_840, 2: 519_070_720}[tp]


def megatron_layout(model: torch.nn.Module, dp: int, bucket_size: int | None):
    """megatron's DistributedOptimizer layout of `model`'s parameters and each DP rank's
    optimizer shard (elements), from megatron's own classmethods."""
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    ddp_config = DistributedDataParallelConfig(use_distributed_optimizer=True)
    layout = DistributedOptimizer._compute_per_buffer_param_layout(
        list(model.parameters()), bucket_size, dp, ddp_config
    )
    owned = []
    for r in range(dp):
        buffer = SimpleNamespace(
            data_parallel_group=SimpleNamespace(rank=lambda r=r: r, size=lambda: dp),
            num_optimizer_shards=dp,
            param_index_map=layout.param_index_map,
            buckets=[
                SimpleNamespace(offset=start, grad_data=torch.empty(end - start, device="meta"))
                for start, end in layout.bucket_indices
            ],
        )
        ranges = [
            DistributedOptimizer._build_model_gbuf_range(buffer, i)["param_map"]
            for i in range(len(layout.bucket_indices))
        ]
        owned.append(sum(len(m["param"]) for r_map in ranges for m in r_map.values()))
    return layout.bucket_indices, owned


@pytest.mark.parametrize("dp", [1, 3, 8, 12])
@pytest.mark.parametrize("model_name", ["tiny", "13b_2l"])
def test_buffer_layout_and_optimizer_shards_equal_megatron(model_name: str, dp: int) -> None:
    overrides = ["model=tiny", "training=tiny", "model.transformer_impl=local"]
    if model_name == "13b_2l":
        overrides = [*SHAPE_13B_2L, "parallel=tp2_cpu"]
    cfg = load(overrides)
    model = meta_model(overrides, cfg.parallel.tensor_model_parallel_size)
    for gpu in (False, True):  # one bucket (CPU), or megatron's 40M-element buckets (GPU)
        shape = run_shape(cfg, gpu=gpu).replace(dp=dp)
        buckets = params.buffer_layout(shape)
        indices, owned = megatron_layout(model, dp, shape.bucket_size)
        assert [(b.start, b.end) for b in buckets] == indices
        assert params.shard_numels(buckets, dp) == owned
        assert sum(owned) == sum(p.numel() for p in model.parameters())


def test_tiny_state_bytes_equal_megatron_allocation() -> None:
    """bf16 param buffer, fp32 grad buffer, fp32 master shard + Adam m and v, as allocated."""
    from megatron_chimed.model import build_model
    from megatron_chimed.training.optim import build_optimizer, wrap_ddp

    cfg = load(["model=tiny", "training=tiny", "parallel=tp1"])
    model = build_model(cfg.model, cfg.parallel, "bf16")
    ddp = wrap_ddp(model, cfg.parallel)
    optimizer, _ = build_optimizer(ddp, cfg.optim, cfg.parallel, "bf16", 10)
    weights = sum(b.param_data.numel() * b.param_data.element_size() for b in ddp.buffers)
    grads = sum(b.grad_data.numel() * b.grad_data.element_size() for b in ddp.buffers)
    inner = [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    masters = [p for o in inner for g in o.param_groups for p in g["params"]]
    moments = [t for o in inner for s in o.state.values() for k, t in s.items() if k != "step"]
    opt_bytes = sum(t.numel() * t.element_size() for t in masters + moments)
    assert {str(b.param_data.dtype) for b in ddp.buffers} == {"torch.bfloat16"}
    assert {str(b.grad_data.dtype) for b in ddp.buffers} == {"torch.float32"}
    assert {str(p.dtype) for p in masters} == {"torch.float32"}

    planned = state_bytes(run_shape(cfg, gpu=False))
    tiny_params = 2 * 2048 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 176) + 5 * 64  # padded vocab 2048
    assert planned.params == tiny_params == sum(p.numel() for p in model.parameters())
    assert (planned.weights, planned.grads, planned.optimizer) == (weights, grads, opt_bytes)
    # DP=1: one bucket, its end padded to lcm(1, 128) = 128 elements; padding has no optimizer
    # state.
    assert planned.buffer == 362_880 == -(-tiny_params // 128) * 128
    assert (weights, grads, opt_bytes) == (2 * 362_880, 4 * 362_880, 12 * tiny_params)
