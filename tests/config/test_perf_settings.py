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
    assert (p.cross_entropy_loss_fusion, p.cross_entropy_fusion_impl) == (True, "native")
    assert p.tp_comm_overlap is False


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
        (["parallel.cross_entropy_fusion_impl=apex"],
         "parallel.cross_entropy_fusion_impl='apex': expected native or te"),
        (["parallel=tp2_cpu", "parallel.tp_comm_overlap=true"],
         "parallel.tp_comm_overlap=true needs sequence parallelism"),
        (["parallel=tp1", "parallel.sequence_parallel=true", "parallel.tp_comm_overlap=true"],
         "parallel.tp_comm_overlap=true needs sequence parallelism"),
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


def test_tp_comm_overlap_loads_with_sequence_parallelism_and_needs_the_te_spec() -> None:
    from megatron_chimed.model.builder import transformer_config
    from megatron_chimed.testing.tiny_ziya import TINY

    p = load(["experiment=chimed_paper_cpt", "parallel.tp_comm_overlap=true"]).parallel
    assert (p.tp_comm_overlap, p.sequence_parallel, p.tensor_model_parallel_size) == (True, True, 2)
    with pytest.raises(ValueError) as err:  # the CPU resolves the local spec
        transformer_config(TINY, p)
    assert str(err.value).startswith("parallel.tp_comm_overlap=true needs the Transformer Engine")


def test_cross_entropy_fusion_is_off_on_the_cpu_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from megatron_chimed.model import builder

    monkeypatch.setattr(builder, "_said", set())
    with caplog.at_level("INFO", logger=builder.log.name):
        assert builder.resolve_cross_entropy_fusion(ParallelConfig(), "bf16") is None
        assert builder.resolve_cross_entropy_fusion(ParallelConfig(), "bf16") is None
    said = [r.message for r in caplog.records if "cross_entropy_loss_fusion" in r.message]
    assert said == [
        "CPU run: parallel.cross_entropy_loss_fusion is off (CUDA kernels); the unfused cross "
        "entropy computes the same loss"
    ]


def test_cross_entropy_fusion_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from megatron_chimed.model import builder

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    resolve = builder.resolve_cross_entropy_fusion
    assert resolve(ParallelConfig(), "bf16") == "native"
    # megatron's native kernel hands back bf16 gradients: not in an fp32 or fp16 run
    assert resolve(ParallelConfig(), "fp32") is None
    assert resolve(ParallelConfig(cross_entropy_loss_fusion=False), "bf16") is None
    te = ParallelConfig(cross_entropy_fusion_impl="te")
    monkeypatch.setattr(builder, "have_transformer_engine", lambda: False)
    with pytest.raises(RuntimeError) as err:  # never a silent fallback on a GPU
        resolve(te, "bf16")
    assert str(err.value).startswith("parallel.cross_entropy_fusion_impl=te needs Transformer")
    monkeypatch.setattr(builder, "have_transformer_engine", lambda: True)
    assert resolve(te, "fp32") == "te"


@pytest.mark.parametrize("fusion", ["native", "te", None])
def test_cross_entropy_fusion_reaches_megatron_s_transformer_config(
    monkeypatch: pytest.MonkeyPatch, fusion: str | None
) -> None:
    from megatron_chimed.model import builder
    from megatron_chimed.testing.tiny_ziya import TINY

    monkeypatch.setattr(builder, "resolve_cross_entropy_fusion", lambda parallel, precision: fusion)
    config = builder.transformer_config(TINY, ParallelConfig(), "bf16")
    assert config.cross_entropy_loss_fusion is (fusion is not None)
    assert config.cross_entropy_fusion_impl == (fusion or "native")
    assert config.tp_comm_overlap is False
