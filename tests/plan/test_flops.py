"""FLOPs per step equal Megatron-LM's `num_floating_point_operations`
(megatron/training/training.py), written out and computed by that function; the step-time,
MFU and data-parallel traffic arithmetic on the paper's CPT layout."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from megatron_chimed.config import load
from megatron_chimed.plan.flops import step_estimate, step_flops
from megatron_chimed.plan.gpus import GPUS
from megatron_chimed.plan.shape import run_shape

H, F, VOCAB, S, LAYERS = 5120, 13824, 39424, 4096, 40
PARAMS_TP2 = 6_546_150_400  # per TP rank (tests/plan/test_memory.py)


def megatron_flops(batch: int, vocab: int = VOCAB) -> float:
    from megatron.training.training import num_floating_point_operations

    args = SimpleNamespace(
        hybrid_layer_pattern=None, group_query_attention=False, num_attention_heads=40,
        num_query_groups=40, num_experts=None, mtp_num_layers=None, num_layers=LAYERS,
        moe_ffn_hidden_size=None, ffn_hidden_size=F, moe_latent_size=None,
        moe_shared_expert_intermediate_size=None, swiglu=True, multi_latent_attention=False,
        kv_channels=128, attention_output_gate=False, experimental_attention_variant=None,
        hidden_size=H, padded_vocab_size=vocab, seq_length=S,
    )  # fmt: skip
    return num_floating_point_operations(args, batch)


# The arithmetic below is checked on the CPT layout of global batch 16 (two micro-batches per
# DP rank) with the parameter all-gather exposed: small numbers to follow by hand.
OLD_CPT = [
    "experiment=chimed_paper_cpt",
    "training.global_batch_size=16",
    "parallel.overlap_param_gather=false",
]


def test_cpt_step_flops_equal_megatron() -> None:
    flops = step_flops(run_shape(load(OLD_CPT)))
    gemm = LAYERS * (4 * H * H + 3 * H * F) + H * VOCAB  # QKV + proj, SwiGLU, vocab projection
    assert flops.gemm_params == gemm == 12_889_620_480
    assert flops.linear == 6 * gemm * 16 * S  # 6 x params x tokens
    assert flops.attention == 6 * H * LAYERS * 16 * S * S  # causal QK^T and PV
    assert flops.total == 5_398_258_494_996_480 == megatron_flops(16)


def test_rm_step_flops_count_every_answer_and_a_scalar_head() -> None:
    flops = step_flops(run_shape(load(["experiment=chimed_paper_rm"])))
    assert flops.tokens == 8 * 4 * S  # 8 prompts x 4 answers
    assert flops.total == megatron_flops(32, vocab=1)


def test_step_time_mfu_and_traffic_on_two_h100_nodes() -> None:
    shape = run_shape(load(OLD_CPT))
    est = step_estimate(shape, GPUS["h100-80g"], efficiency=0.4, comm_efficiency=0.8)
    total = 5_398_258_494_996_480
    compute = total / (16 * 989e12 * 0.4)
    assert est.compute_s == pytest.approx(compute)
    assert est.compute_s == pytest.approx(0.8529, abs=1e-4)
    assert (est.link, est.link_gb_s) == ("ib-ndr", 50.0)  # two nodes: the DP ring crosses IB
    # per GPU: 7/8 of the fp32 grad buffer reduce-scattered, 7/8 of the bf16 params gathered
    assert est.reduce_bytes == 7 * 4 * PARAMS_TP2 // 8
    assert est.gather_bytes == 7 * 2 * PARAMS_TP2 // 8
    assert est.reduce_s == pytest.approx(est.reduce_bytes / 40e9)
    # two micro-batches: the last one's backward (2/3 of its compute) hides the reduce
    assert est.window_s == pytest.approx(compute / 2 * 2 / 3)
    assert est.reduce_exposed_s == pytest.approx(est.reduce_s - est.window_s)
    assert est.step_s == pytest.approx(compute + est.reduce_exposed_s + est.gather_s)
    assert est.step_s == pytest.approx(1.428, abs=1e-3)
    assert est.mfu == pytest.approx(total / (est.step_s * 16 * 989e12))
    assert est.tokens_per_s_per_gpu == pytest.approx(16 * S / est.step_s / 16)


def test_one_node_uses_nvlink_and_a_large_batch_hides_the_reduce() -> None:
    shape = run_shape(load(["experiment=chimed_paper_rs", "launcher.nodes=1"]))  # DP 4, 16 mb
    est = step_estimate(shape, GPUS["h100-80g"])
    assert (est.link, est.link_gb_s) == ("nvlink", 450.0)
    assert est.window_s > est.reduce_s
    last_bucket_s = est.reduce_exposed_s  # only the final bucket (embedding side) is exposed
    assert 0 < last_bucket_s < est.reduce_s / 10


def test_a_single_gpu_has_no_dp_traffic() -> None:
    shape = run_shape(load(["model=tiny", "training=tiny"]))
    est = step_estimate(shape, GPUS["h200"])
    assert (est.reduce_bytes, est.gather_bytes, est.reduce_exposed_s) == (0, 0, 0.0)
    assert est.step_s == est.compute_s


def test_efficiency_out_of_range_names_the_flag() -> None:
    shape = run_shape(load(["model=tiny", "training=tiny"]))
    with pytest.raises(ValueError, match=r"^--efficiency=1.5: expected a fraction"):
        step_estimate(shape, GPUS["h200"], efficiency=1.5)
