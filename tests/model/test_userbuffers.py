"""parallel.tp_comm_overlap's Transformer Engine userbuffers (model/userbuffers.py), with a
stand-in for TE's module (no TE on the CPU suite): made once per shape, before the model, with
Megatron-LM's arguments; an error naming the option without TE."""

from __future__ import annotations

import sys
import types

import pytest

from megatron_chimed.config.schema import ParallelConfig

OVERLAP = ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True, tp_comm_overlap=True)


@pytest.fixture
def fake_te(monkeypatch: pytest.MonkeyPatch) -> list:
    """transformer_engine.pytorch.module.base as far as userbuffers go; returns its calls."""
    from megatron_chimed.model import userbuffers

    calls: list = []
    base = types.SimpleNamespace(
        initialize_ub=lambda **kwargs: calls.append(("initialize_ub", kwargs)),
        destroy_ub=lambda: calls.append(("destroy_ub", {})),
    )
    module = types.ModuleType("transformer_engine.pytorch.module")
    module.base = base
    pytorch = types.ModuleType("transformer_engine.pytorch")
    pytorch.module = module
    te = types.ModuleType("transformer_engine")
    te.pytorch = pytorch
    for name, mod in (("transformer_engine", te), ("transformer_engine.pytorch", pytorch),
                      ("transformer_engine.pytorch.module", module)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(userbuffers, "_shape", None)
    return calls


def test_off_makes_nothing(fake_te: list) -> None:
    from megatron_chimed.model.userbuffers import initialize_userbuffers

    assert initialize_userbuffers(ParallelConfig(), 5120, 4096, 1) is None
    assert fake_te == []


def test_buffers_for_one_micro_batch_once_per_shape(fake_te: list) -> None:
    from megatron_chimed.model.userbuffers import initialize_userbuffers

    assert initialize_userbuffers(OVERLAP, 5120, 4096, 2) == (8192, 5120)
    assert initialize_userbuffers(OVERLAP, 5120, 4096, 2) == (8192, 5120)  # a second stage
    assert fake_te == [
        ("initialize_ub", {"shape": [8192, 5120], "tp_size": 2, "use_fp8": False, "ub_cfgs": {},
                           "bootstrap_backend": "nccl"}),
    ]  # fmt: skip
    initialize_userbuffers(OVERLAP, 5120, 2048, 1)  # another shape: the old ones go first
    assert [name for name, _ in fake_te] == ["initialize_ub", "destroy_ub", "initialize_ub"]
    assert fake_te[-1][1]["shape"] == [2048, 5120]


def test_without_transformer_engine_it_is_an_error_naming_the_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from megatron_chimed.model import userbuffers

    monkeypatch.setitem(sys.modules, "transformer_engine", None)  # import fails
    monkeypatch.setattr(userbuffers, "_shape", None)
    with pytest.raises(RuntimeError) as err:
        userbuffers.initialize_userbuffers(OVERLAP, 64, 64, 1)
    assert str(err.value).startswith("parallel.tp_comm_overlap=true needs Transformer Engine")
