"""(b) The paper's 13B at TP=2: weights, gradients and optimizer state equal Megatron-LM's
megatron/training/theoretical_memory_usage.py `compute_weight_and_optimizer_memory` (bf16
params, fp32 grads, fp32 master + Adam: 6 + 12/DP bytes per parameter with the distributed
optimizer, 18 without), written out here and also computed by that function; then the verdict
and the advice."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from megatron_chimed.config import load
from megatron_chimed.plan.gpus import GIB, GPUS
from megatron_chimed.plan.memory import memory_plan, state_bytes, suggestions
from megatron_chimed.plan.shape import run_shape

PAPER_CPT = ["experiment=chimed_paper_cpt"]  # 2 nodes x 8 GPUs, TP 2 -> DP 8
# Parameters on one TP rank (theoretical_memory_usage's "most loaded shard", PP=1): 40 layers
# x (QKV + output projection 4h^2 + SwiGLU 3hf) / TP + the embedding and the untied output
# layer, 39424 x 5120 each, / TP + 81 RMSNorm weights of h, whole on every rank.
H, F, VOCAB = 5120, 13824, 39424
PARAMS_TP2 = (40 * (4 * H * H + 3 * H * F) + 2 * VOCAB * H) // 2 + 81 * H
assert PARAMS_TP2 == 6_546_150_400


def megatron_weight_and_optimizer_bytes(distributed_optimizer: bool, dp: int) -> float:
    from megatron.training.theoretical_memory_usage import compute_weight_and_optimizer_memory

    args = SimpleNamespace(
        kv_channels=128, num_attention_heads=40, hidden_size=H, group_query_attention=False,
        num_query_groups=40, num_experts=None, swiglu=True, num_layers=40, ffn_hidden_size=F,
        moe_shared_expert_intermediate_size=None, mtp_num_layers=None, normalization="RMSNorm",
        multi_latent_attention=False, padded_vocab_size=VOCAB,
        untie_embeddings_and_output_weights=True, moe_latent_size=None, moe_router_topk=None,
        add_bias_linear=False, expert_tensor_parallel_size=1, expert_model_parallel_size=1,
        pipeline_model_parallel_size=1, world_size=2 * dp, tensor_model_parallel_size=2,
        data_parallel_size=dp, use_distributed_optimizer=distributed_optimizer,
    )  # fmt: skip
    return compute_weight_and_optimizer_memory(args)


def test_paper_13b_tp2_state_equals_megatron_formula() -> None:
    state = state_bytes(run_shape(load(PAPER_CPT)))
    assert state.params == state.buffer == PARAMS_TP2  # every size a multiple of 128: no padding
    assert state.weights == 2 * PARAMS_TP2 == 13_092_300_800  # bf16
    assert state.grads == 4 * PARAMS_TP2 == 26_184_601_600  # fp32 grad buffer
    assert state.shard == PARAMS_TP2 // 8
    assert state.optimizer == 12 * PARAMS_TP2 // 8 == 9_819_225_600  # master + m + v over DP 8
    total = state.weights + state.grads + state.optimizer
    assert total == PARAMS_TP2 * (6 + 12 / 8) == 49_096_128_000
    assert total == megatron_weight_and_optimizer_bytes(True, 8)


@pytest.mark.parametrize("distributed_optimizer,dp", [(True, 2), (True, 16), (False, 8)])
def test_other_layouts_equal_megatron_formula(distributed_optimizer: bool, dp: int) -> None:
    overrides = [
        *PAPER_CPT,
        f"launcher.nodes={dp // 4}" if dp >= 4 else "launcher=torchrun",
        f"parallel.use_distributed_optimizer={str(distributed_optimizer).lower()}",
    ]
    if dp < 4:
        overrides.append(f"launcher.procs_per_node={2 * dp}")
    state = state_bytes(run_shape(load(overrides)))
    per_param = 6 + 12 / dp if distributed_optimizer else 18
    assert state.weights + state.grads + state.optimizer == PARAMS_TP2 * per_param
    assert state.weights + state.grads + state.optimizer == pytest.approx(
        megatron_weight_and_optimizer_bytes(distributed_optimizer, dp), rel=0, abs=1
    )


def test_fp32_run_has_no_master_copy() -> None:
    state = state_bytes(run_shape(load([*PAPER_CPT, "precision=fp32"])))
    assert (state.weights, state.grads, state.optimizer) == (
        4 * PARAMS_TP2, 4 * PARAMS_TP2, 8 * PARAMS_TP2 // 8
    )  # fmt: skip


def test_reward_model_has_a_head_instead_of_the_vocab_projection() -> None:
    shape = run_shape(load(["experiment=chimed_paper_rm"]))
    assert state_bytes(shape).params == PARAMS_TP2 - VOCAB * H // 2 + H
    assert (shape.micro_batch, shape.global_batch) == (4, 32)  # 4 answers per prompt


def test_paper_cpt_fits_on_h100_with_the_items_adding_up() -> None:
    shape = run_shape(load(PAPER_CPT))
    plan = memory_plan(shape, GPUS["h100-80g"])
    names = [i.name for i in plan.items]
    assert names[:3] == [
        "bf16 weights",
        "fp32 gradient buffer",
        "optimizer: fp32 master + Adam m, v",
    ]
    acts, logits, workspace = (plan.items[i].bytes for i in (3, 4, 5))
    assert logits == 8 * 4096 * VOCAB // 2  # fp32 logits and their masked copy
    assert workspace == 2 * GIB + round(0.05 * (acts + logits))
    assert plan.total == 49_096_128_000 + acts + logits + workspace
    assert plan.fits and plan.capacity == 81559 * 2**20
    assert plan.margin / GIB == pytest.approx(18.03, abs=0.01)
    assert plan.biggest.name == "fp32 gradient buffer"


def test_advice_when_it_does_not_fit() -> None:
    shape = run_shape(load(PAPER_CPT))
    assert not memory_plan(shape, GPUS["a100-40g"]).fits
    advice = suggestions(shape, GPUS["a100-40g"])
    # weights + grads alone are 36.6 GiB: no DP size brings it under 40 GiB
    assert (
        advice[0]
        == "more data parallelism cannot do it: without the optimizer it is still 52.5 GiB"
    )
    assert advice[1].startswith("recompute=selective: 61.6 GiB (still does not fit)")
    assert advice[2].startswith("recompute=full: 49.5 GiB (still does not fit)")
    assert advice[3] == "parallel.tensor_model_parallel_size=4 (same GPUs, DP 4): 36.4 GiB (fits)"
    # One node (DP 4) with micro-batch 2 on an 80 GB card: more DP is an answer, and how much.
    shape = run_shape(load([*PAPER_CPT, "launcher.nodes=1", "training.micro_batch_size=2"]))
    plan = memory_plan(shape, GPUS["a100-80g"])
    assert not plan.fits and plan.total / GIB == pytest.approx(84.66, abs=0.01)
    advice = suggestions(shape, GPUS["a100-80g"])
    # DP 6 shrinks the optimizer shard enough (DP 5 does not); 512 sequences / micro-batch 2
    # split over DP 8, not 6.
    assert (
        advice[0]
        == "more data parallelism: DP >= 6 (12 GPUs); global batch 512 takes DP 8 (16 GPUs)"
    )
    for dp, fits in ((5, False), (6, True)):
        assert memory_plan(shape.replace(dp=dp), GPUS["a100-80g"]).fits is fits
    assert "training.micro_batch_size=1: 70.8 GiB (fits)" in advice
    assert advice[2].startswith("recompute=full: 60.5 GiB (fits)")


def test_reward_model_advice_names_the_sequence_cap() -> None:
    shape = run_shape(load(["experiment=chimed_paper_rm"]))
    plan = memory_plan(shape, GPUS["h100-80g"])
    assert not plan.fits  # 4 answers x 4096 tokens per micro-batch, worst case
    assert "training.seq_length=2048 (the RM's cap): 73.5 GiB (fits)" in suggestions(
        shape, GPUS["h100-80g"]
    )
