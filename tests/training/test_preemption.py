"""The preemption save survives a signal sent to every process (the checkpoint writer's helper
processes included), and a SIGKILLed rank leaves none of them behind.

tests/training/preemption_checks.py runs one process of the tiny CPT run; the module's fixture
reads what it saw, SIGKILLs it and watches its helper processes.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_chimed.testing.processes import gone, wait_gone
from megatron_chimed.testing.workers import ROOT


@pytest.fixture(scope="module")
def run(tiny_ziya: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from megatron_chimed.data.indexed import output_prefix, preprocess
    from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA

    tmp = tmp_path_factory.mktemp("preemption")
    preprocess(
        sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl")),
        tmp / "sample",
        tiny_ziya,
        progress=False,
    )
    out = tmp / "seen.json"
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "training" / "preemption_checks.py"),
        "--out", str(out),
        "--run-dir", str(tmp / "run"),
        "--data", output_prefix(tmp / "sample", "text"),
        "--tokenizer", str(tiny_ziya),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = (tmp / "worker.log").open("w")
    # A session of its own: the worker signals its whole process group, never pytest's.
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while not out.exists():
            assert proc.poll() is None, (tmp / "worker.log").read_text()[-6000:]
            assert time.monotonic() < deadline, "the worker did not finish in 300 s"
            time.sleep(0.2)
        seen = json.loads(out.read_text())
        helpers = [seen["after_signals"][name] for name in ("manager", "tracker")]
        proc.kill()
        proc.wait()
        seen["helpers_gone_after_s"] = wait_gone(helpers, timeout=10)
        for pid in helpers:  # survivors of a failed check: not to be left running
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        return seen
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_signal_to_every_process_spares_the_checkpoint_writer(run: dict) -> None:
    # The Manager and the tracker existed before the signals and are the same processes after.
    assert set(run["before"]) == {"manager", "tracker"}
    assert run["after_signals"] == run["before"]
    # Saved at iteration 1, signalled during iteration 2, stopped after iteration 3 (the flag's
    # all-reduce runs in the background: one step later): the preemption save worked.
    assert (run["status"], run["iteration"], run["latest"]) == ("preempted", 3, "iter_0000003")


@pytest.mark.slow
def test_sigkilled_rank_leaves_no_helper_process(run: dict) -> None:
    assert run["helpers_gone_after_s"] is not None
    assert run["helpers_gone_after_s"] < 10


def test_megatron_writer_queue_canary() -> None:
    """megatron-core's checkpoint writer takes its results queue from the module global
    `_results_queue`, created on first use by `get_write_results_queue` in a 'spawn' context:
    training/preemption.py presets that global with its own queue."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    signature = inspect.signature(filesystem_async.get_write_results_queue)
    assert signature.parameters["mp_mode"].default == "spawn"
    saved = filesystem_async._results_queue
    sentinel = object()
    try:
        filesystem_async._results_queue = sentinel
        assert filesystem_async.get_write_results_queue() is sentinel
    finally:
        filesystem_async._results_queue = saved
    # The writer asks for the queue through the module, so the preset one is what it gets.
    source = inspect.getsource(filesystem_async.FileSystemWriterAsync)
    assert "get_write_results_queue()" in source


@pytest.mark.slow
def test_first_sigint_requests_a_checkpoint_the_second_aborts() -> None:
    code = (
        "import os, signal, time\n"
        "from megatron_chimed.training.preemption import PreemptionFlag\n"
        "flag = PreemptionFlag()\n"
        "flag.started()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.2)\n"
        "print(flag.received, flag.requested(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(5)\n"
        "print('not aborted', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 130, done.stderr[-4000:]
    assert done.stdout == f"{int(signal.SIGINT)} True\n"
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_during_start_up_ctrl_c_ends_it_and_a_preemption_waits_for_the_first_step() -> None:
    code = (
        "import os, signal, time\n"
        "from megatron_chimed.training import startup\n"
        "from megatron_chimed.training.preemption import PreemptionFlag\n"
        "startup.guard()\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"  # a preemption before the flag exists
        "time.sleep(0.2)\n"
        "flag = PreemptionFlag()\n"
        "print(flag.received, flush=True)\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"  # model build: Ctrl-C
        "    time.sleep(5)\n"
        "    print('not interrupted', flush=True)\n"
        "except startup.StartupInterrupted as err:\n"
        "    print(err, startup.interrupted(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"  # the second one: out at once
        "time.sleep(5)\n"
        "print('not aborted', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 130, done.stderr[-4000:]
    assert done.stdout == (
        f"{int(signal.SIGUSR1)}\ninterrupted during start-up; nothing to save True\n"
    )
    assert "Traceback" not in done.stderr
