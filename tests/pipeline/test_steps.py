"""A pipeline training step starts its ranks as `chimed train` does (launch/torchrun.py), with a
stand-in launcher: the end-to-end run is test_pipeline.py's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megatron_chimed.config.schema import PipelineConfig
from megatron_chimed.pipeline import steps
from megatron_chimed.run_log import LOG_FILE_ENV


def launch(monkeypatch, tmp_path: Path, status: int) -> list[dict]:
    calls: list[dict] = []

    def torchrun(module: str, nproc: int, args: list[str], *, preemptible: bool, name: str):
        calls.append(dict(module=module, nproc=nproc, args=args, preemptible=preemptible,
                          name=name, log=os.environ.get(LOG_FILE_ENV)))  # fmt: skip
        return status

    monkeypatch.setattr(steps, "torchrun", torchrun)
    monkeypatch.delenv(LOG_FILE_ENV, raising=False)
    ctx = steps.Context(tmp_path, PipelineConfig(nproc_per_node=2), ["experiment=demo"])
    try:
        ctx.train("sft")
    finally:
        assert os.environ.get(LOG_FILE_ENV) is None  # the step's log is named only meanwhile
    return calls


def test_a_training_step_runs_under_our_launcher_with_its_log(monkeypatch, tmp_path) -> None:
    (call,) = launch(monkeypatch, tmp_path, status=0)
    assert (call["module"], call["nproc"], call["preemptible"], call["name"]) == (
        "megatron_chimed.train", 2, True, "step sft"
    )  # fmt: skip
    assert call["log"] == str((tmp_path / "logs" / "sft.log").resolve())
    assert call["args"][:3] == ["experiment=demo", "stage=sft", f"run_dir={tmp_path / 'sft'}"]
    assert f"checkpoint.load={tmp_path / 'cpt' / 'checkpoints'}" in call["args"]


def test_a_failed_step_stops_the_pipeline_naming_its_log(monkeypatch, tmp_path) -> None:
    log = tmp_path / "logs" / "sft.log"
    with pytest.raises(steps.StepFailed, match=rf"step sft failed \(exit 2\): see {log}"):
        launch(monkeypatch, tmp_path, status=2)
