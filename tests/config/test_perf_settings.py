"""The GPU performance settings of `parallel` (config/schema.py ParallelConfig): their
defaults, what load() makes of the paper experiment, and errors naming the key."""

from __future__ import annotations

import pytest

from megatron_chimed.config import ConfigError, load
from megatron_chimed.config.schema import ParallelConfig


def test_defaults_are_megatron_bridge_s_and_megatron_lm_s() -> None:
    p = ParallelConfig()
    assert (p.overlap_grad_reduce, p.overlap_param_gather, p.align_param_gather) == (
        True, True, False
    )  # fmt: skip
    assert p.bucket_size is None
    assert p.gradient_accumulation_fusion is True
    assert (p.recompute_granularity, p.recompute_method, p.recompute_num_layers) == (
        None, None, None
    )  # fmt: skip


def test_the_paper_cpt_experiment() -> None:
    cfg = load(["experiment=chimed_paper_cpt"])
    assert (cfg.training.global_batch_size, cfg.training.micro_batch_size) == (512, 1)
    assert cfg.training.num_microbatches(8) == 64  # 2 nodes x 8 GPUs at TP=2: DP=8
    p = cfg.parallel
    assert (p.overlap_grad_reduce, p.overlap_param_gather, p.bucket_size) == (True, True, None)
    assert (p.gradient_accumulation_fusion, p.recompute_granularity) == (True, None)


@pytest.mark.parametrize(
    ("overrides", "settings"),
    [
        (["parallel.recompute_granularity=selective"], ("selective", None, None)),
        (["parallel.recompute_granularity=full", "parallel.recompute_method=uniform",
          "parallel.recompute_num_layers=1"], ("full", "uniform", 1)),
        (["parallel.recompute_granularity=full", "parallel.recompute_method=block",
          "parallel.recompute_num_layers=20"], ("full", "block", 20)),
    ],
)  # fmt: skip
def test_recompute_modes_load(overrides: list[str], settings: tuple) -> None:
    p = load(["experiment=chimed_paper_cpt", *overrides]).parallel
    assert (p.recompute_granularity, p.recompute_method, p.recompute_num_layers) == settings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["parallel.recompute_granularity=everything"],
         "parallel.recompute_granularity='everything': expected null, selective or full"),
        (["parallel.recompute_granularity=full"],
         "parallel.recompute_method is required with recompute_granularity=full"),
        (["parallel.recompute_granularity=full", "parallel.recompute_method=uniform"],
         "parallel.recompute_num_layers=None must be >= 1 with recompute_granularity=full"),
        (["parallel.recompute_granularity=full", "parallel.recompute_method=uniform",
          "parallel.recompute_num_layers=0"],
         "parallel.recompute_num_layers=0 must be >= 1 with recompute_granularity=full"),
        (["parallel.recompute_granularity=full", "parallel.recompute_method=zigzag",
          "parallel.recompute_num_layers=1"],
         "parallel.recompute_method='zigzag': expected uniform or block"),
        (["parallel.recompute_granularity=selective", "parallel.recompute_method=uniform"],
         "parallel.recompute_method='uniform' is only read with recompute_granularity=full"),
        (["parallel.recompute_granularity=selective", "parallel.recompute_num_layers=2"],
         "parallel.recompute_num_layers=2 is only read with recompute_granularity=full"),
        (["parallel.recompute_num_layers=2"],
         "parallel.recompute_num_layers=2 is only read with recompute_granularity=full "
         "(it is None)"),
        (["parallel.bucket_size=0"], "parallel.bucket_size=0 must be >= 1 (or null)"),
    ],
)  # fmt: skip
def test_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=None) as err:
        load(["experiment=chimed_paper_cpt", *overrides])
    assert message in str(err.value)


def test_recompute_num_layers_beyond_the_model_names_both_keys() -> None:
    from megatron_chimed.model.builder import transformer_config
    from megatron_chimed.testing.tiny_ziya import TINY

    parallel = ParallelConfig(recompute_granularity="full", recompute_method="block",
                              recompute_num_layers=TINY.num_layers + 1)  # fmt: skip
    with pytest.raises(ValueError) as err:
        transformer_config(TINY, parallel)
    assert str(err.value) == (
        f"parallel.recompute_num_layers={TINY.num_layers + 1} is more than "
        f"model.num_layers={TINY.num_layers}"
    )


def test_gradient_accumulation_fusion_is_off_on_the_cpu() -> None:
    from megatron_chimed.model.builder import resolve_gradient_accumulation_fusion

    assert resolve_gradient_accumulation_fusion(ParallelConfig()) is False
    assert resolve_gradient_accumulation_fusion(
        ParallelConfig(gradient_accumulation_fusion=False)
    ) is False  # fmt: skip


def test_gradient_accumulation_fusion_without_the_kernel_on_a_gpu_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from megatron_chimed.model import builder

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(builder, "have_grad_accum_fusion_kernel", lambda: False)
    with pytest.raises(RuntimeError) as err:
        builder.resolve_gradient_accumulation_fusion(ParallelConfig())
    assert str(err.value).startswith(
        "parallel.gradient_accumulation_fusion=true needs Apex's fused_weight_gradient_mlp_cuda"
    )
    assert str(err.value).endswith("set parallel.gradient_accumulation_fusion=false")
    monkeypatch.setattr(builder, "have_grad_accum_fusion_kernel", lambda: True)
    assert builder.resolve_gradient_accumulation_fusion(ParallelConfig()) is True
