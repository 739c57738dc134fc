"""GPU discipline on the CPU suite: tensors handed to collectives, and modules created after
the model was placed, are on the compute device (faked as `meta`, see
megatron_chimed/testing/collective_guard.py); host tensors go over the host (gloo) group."""

from __future__ import annotations

import signal

import pytest
import torch

from megatron_chimed.testing.collective_guard import checked_collectives


@pytest.fixture(scope="module", autouse=True)
def megatron_world():
    from megatron_chimed.platform import destroy, initialize

    initialize(tensor_parallel=1)
    yield
    destroy()


def test_training_reports_are_reduced_on_the_compute_device() -> None:
    from megatron_chimed.training.loop import _reduce_reports

    reports = [{"lm loss": torch.tensor([3.0, 2.0]), "acc": torch.tensor([1.0, 2.0])}] * 2
    with checked_collectives("meta") as calls:
        totals = _reduce_reports([{k: v.to("meta") for k, v in r.items()} for r in reports])
    assert {t.device.type for t in totals.values()} == {"meta"}
    assert calls == ["all_reduce@meta"]  # one all-reduce for every name


def test_training_reports_sum_and_average() -> None:
    from megatron_chimed.training.loop import _averages, _reduce_reports

    reports = [{"lm loss": torch.tensor([3.0, 2.0])}, {"lm loss": torch.tensor([1.0, 4.0])}]
    with checked_collectives("cpu"):
        totals = _reduce_reports(reports)
    assert totals["lm loss"].tolist() == [4.0, 6.0]
    assert _averages(totals) == {"lm_loss": pytest.approx(4.0 / 6.0)}


def test_preemption_flag_goes_over_the_host_group() -> None:
    from megatron_chimed.training.preemption import SIGNALS, PreemptionFlag

    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    try:
        with checked_collectives("meta") as calls:
            flag = PreemptionFlag()
            assert not flag.requested()
            flag._on_signal(signal.SIGUSR1, None)
            assert flag.requested()
        assert calls == ["all_reduce@cpu", "all_reduce@cpu"]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_preemption_poll_runs_in_the_background_over_the_host_group() -> None:
    """The loop's check: the first poll blocks (a start-up signal stops after step 1), each
    later one returns what the previous one started, so a signal is seen one poll later."""
    from megatron_chimed.training.preemption import SIGNALS, PreemptionFlag

    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    try:
        with checked_collectives("meta") as calls:
            flag = PreemptionFlag()
            assert flag.poll() is False  # blocking, then one started in the background
            assert flag._pending is not None
            flag._on_signal(signal.SIGUSR1, None)  # during the next step
            assert flag.poll() is False  # the all-reduce started before the signal
            assert flag.poll() is True  # ... and the one started after it
            assert flag._pending is None  # stopping: nothing left in flight
            flag.drain()
        assert calls == ["all_reduce@cpu"] * 3
        started = PreemptionFlag()
        started._on_signal(signal.SIGTERM, None)  # a signal before the first step
        assert started.poll() is True
        started.drain()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_guard_rejects_a_host_tensor_on_a_device_group() -> None:
    import torch.distributed as dist

    with checked_collectives("meta"), pytest.raises(AssertionError, match="all_reduce.*cpu"):
        dist.all_reduce(torch.zeros(2))


def test_value_head_is_placed_with_the_trunk() -> None:
    from megatron_chimed.model import ModelConfig, ParallelConfig, build_model, unwrap
    from megatron_chimed.reward.model import VALUE_HEAD, RewardModel

    gpt = unwrap(build_model(ModelConfig(), ParallelConfig())).to("meta")  # a placed trunk
    head = getattr(RewardModel(gpt).module, VALUE_HEAD)
    assert head.weight.device.type == "meta"
    assert head.weight.dtype == gpt.config.params_dtype
