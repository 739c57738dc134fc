"""GPU performance settings on the tiny model (one 2-process gloo launch, TP=1 x DP=2, fp32):
recompute gives the loss and grads of no recompute, wrap_ddp hands the overlap settings to
megatron's DistributedDataParallelConfig, and training with both overlaps on the CPU matches
training without them (so the CPU keeps the config's values: none is forced off)."""

from __future__ import annotations

import pytest

from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed

MODES = ["selective", "full_uniform_1", "full_uniform_2", "full_block_1"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("perf")
    return run_worker("tests/training/perf_checks.py", 2, tmp / "results.json")


@pytest.mark.parametrize("mode", MODES)
def test_recompute_gives_the_loss_and_grads_of_none(results: dict, mode: str) -> None:
    none, r = results["recompute"]["none"], results["recompute"][mode]
    assert r["grads"] == none["grads"] == 15
    assert r["loss"] == pytest.approx(none["loss"], abs=1e-6)
    assert r["max_grad_diff"] <= 1e-6


def test_the_built_transformer_config_carries_the_recompute_settings(results: dict) -> None:
    configs = {mode: r["config"] for mode, r in results["recompute"].items()}
    assert configs == {
        "none": [None, None, None],
        "selective": ["selective", None, None],
        "full_uniform_1": ["full", "uniform", 1],
        "full_uniform_2": ["full", "uniform", 2],
        "full_block_1": ["full", "block", 1],
    }


def test_recompute_really_runs_the_forward_again(results: dict) -> None:
    calls = {mode: r["forward_calls"] for mode, r in results["recompute"].items()}
    assert calls["none"] == {"layer": 1, "core_attention": 1}
    assert calls["selective"] == {"layer": 1, "core_attention": 2}  # attention only
    assert calls["full_uniform_1"] == {"layer": 2, "core_attention": 2}
    assert calls["full_block_1"] == {"layer": 2, "core_attention": 2}  # block: layer 0 of 1


def test_gradient_accumulation_fusion_is_off_on_the_cpu(results: dict) -> None:
    # The default asks for it (Megatron-LM's); the CPU has no kernel: off, said once.
    assert {r["gradient_accumulation_fusion"] for r in results["recompute"].values()} == {False}


def test_wrap_ddp_passes_the_overlap_settings_to_megatron(results: dict) -> None:
    assert results["ddp"] == {
        "overlap_grad_reduce": True,
        "overlap_param_gather": True,
        "align_param_gather": True,
        "bucket_size": 12345,
        "use_distributed_optimizer": True,
        "grad_reduce_in_fp32": True,
        "forward_hooks": 39,  # one param-gather pre-hook per sub-module of the tiny GPT
    }


def test_overlapped_training_matches_plain_training_on_the_cpu(results: dict) -> None:
    r = results["overlap"]
    assert r["max_update"] > 1e-2  # the three steps moved the weights ...
    assert r["max_param_diff"] < 1e-5  # ... the same way (fp32 bucket sums: rounding only)


def test_saves_see_gathered_params_with_the_hooks_off_then_back_on(results: dict) -> None:
    r = results["overlap"]
    assert (r["hooks_during_save"], r["hooks_after"]) == (0, 39)
    assert r["plain_hooks"] == 0  # without overlap_param_gather there are none to toggle
