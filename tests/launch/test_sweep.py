"""`chimed train|pipeline -m`: Hydra's sweep syntax expanded into points, each point run in its
own folder (locally one after another, a failure reported and passed), or submitted as one
Slurm job each through launch/submit.py (a stand-in sbatch answers here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from megatron_chimed import cli
from megatron_chimed.config import ConfigError
from megatron_chimed.launch.sweep import expand, point_folder, run_sweep, split_multirun
from megatron_chimed.testing import fake_sbatch
from megatron_chimed.testing.logging_state import kept_logging

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _logging_kept() -> Iterator[None]:
    with kept_logging():  # a sweep sets up its console and log in this process
        yield


def test_choices_and_ranges_expand_in_hydras_order() -> None:
    points = expand(["stage=cpt", "optim.lr=1e-4,2e-4", "seed=range(1,4)", "+x=choice(a,b)"])
    assert len(points) == 12
    assert points[0].overrides == ["stage=cpt", "optim.lr=0.0001", "seed=1", "+x=a"]
    assert points[1].overrides == ["stage=cpt", "optim.lr=0.0001", "seed=1", "+x=b"]
    assert points[-1].overrides == ["stage=cpt", "optim.lr=0.0002", "seed=3", "+x=b"]
    assert points[5].swept == [("optim.lr", "0.0001"), ("seed", "3"), ("x", "b")]
    assert point_folder(points[5]) == "5_optim.lr-0.0001_seed-3_x-b"


def test_values_that_are_not_sweeps() -> None:
    [point] = expand(["data.blend=[1.0,data/x]", "a='p,q'", "data.columns={prompt: q}"])
    assert point.overrides == ["data.blend=[1.0,data/x]", "a='p,q'", "data.columns={prompt: q}"]
    assert point.swept == [] and point_folder(point) == "0"
    lists = expand(["data.blend=[1.0,data/x],[1.0,data/y z]"])
    assert [p.overrides for p in lists] == [["data.blend=[1.0,data/x]"],
                                            ["data.blend=[1.0,data/y\\ z]"]]  # fmt: skip
    assert [point_folder(p) for p in lists] == ["0_data.blend-_1.0_data_x_",
                                                "1_data.blend-_1.0_data_y__z_"]  # fmt: skip
    quoted = expand(["a='x,y',z"])  # a quoted comma is one value
    assert [p.overrides for p in quoted] == [["a='x,y'"], ["a=z"]]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=interval(0,1)", "interval() needs a sweeper plugin"),
        ("run_dir=a,b", "run_dir cannot be swept"),
        ("optim.lr=1e-4,", "override 'optim.lr=1e-4,'"),
    ],
)
def test_a_bad_sweep_is_one_error_naming_it(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand([override])


def test_multirun_flags_are_found() -> None:
    assert split_multirun(["-m", "seed=1,2"]) == (True, ["seed=1,2"])
    assert split_multirun(["seed=1", "--multirun"]) == (True, ["seed=1"])
    assert split_multirun(["seed=1"]) == (False, ["seed=1"])


class Dispatch:
    """Stands in for cli._dispatch: records each point, fails those named in `fail`."""

    def __init__(self, fail: dict[int, object] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail or {}

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        outcome = self.fail.get(len(self.calls))
        if isinstance(outcome, BaseException):
            raise outcome
        return int(outcome or 0)


def test_local_sweep_runs_every_point_in_its_folder_and_goes_on_after_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dispatch = Dispatch({2: 2, 3: RuntimeError("boom\nsecond line")})
    status = run_sweep("train", ["stage=cpt", "seed=1,2,3,4", f"run_dir={tmp_path}"], dispatch)
    assert status == 1
    assert [c[0] for c in dispatch.calls] == ["train"] * 4
    assert dispatch.calls[1][1:] == ["stage=cpt", "seed=2", f"run_dir={tmp_path}/1_seed-2"]
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert [(p["status"], p["detail"]) for p in record["points"]] == [
        ("ok", ""), ("failed", "exit 2"), ("failed", "RuntimeError: boom second line"),
        ("ok", ""),
    ]  # fmt: skip
    out, err = capsys.readouterr()
    assert "chimed train: point 2/4: seed=2 -> " in err
    assert "point 3/4 failed: RuntimeError: boom second line (the sweep goes on)" in err
    assert out.splitlines()[0] == "sweep: 2 of 4 point(s) succeeded"
    assert f"  3 failed      seed=3  {tmp_path}/2_seed-3 (RuntimeError" in out
    assert "point 4/4: seed=4" in (tmp_path / "sweep.log").read_text()


def test_a_point_with_a_config_error_fails_alone(tmp_path: Path) -> None:
    dispatch = Dispatch()
    status = run_sweep("train", ["stage=cpt", "optim.lr=1e-4,oops", f"run_dir={tmp_path}"],
                       dispatch)  # fmt: skip
    assert status == 1 and len(dispatch.calls) == 1  # the bad point never started
    failed = json.loads((tmp_path / "sweep.json").read_text())["points"][1]
    assert failed["status"] == "failed" and "optim.lr" in failed["detail"]


def test_ctrl_c_stops_the_sweep(tmp_path: Path) -> None:
    dispatch = Dispatch({2: KeyboardInterrupt()})
    assert run_sweep("train", ["stage=cpt", "seed=1,2,3", f"run_dir={tmp_path}"], dispatch) == 130
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert [p["status"] for p in record["points"]] == ["ok", "interrupted", "not run"]


def test_only_sweepable_commands_take_multirun(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["smoke", "-m", "seed=1,2"]) == 2
    assert "-m/--multirun sweeps train and pipeline only" in capsys.readouterr().err
    assert cli.main(["train", "--help"]) == 0
    assert "chimed train -m optim.lr=1e-4,2e-4" in capsys.readouterr().out


@pytest.mark.slow
def test_slurm_sweep_submits_one_job_per_point(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_sbatch.install(bin_dir)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    run_dir = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, "-m", "megatron_chimed.cli", "train", "-m", "stage=cpt",
         "launcher=slurm", "launcher.gpus_per_node=0", "launcher.nodes=1",
         "optim.lr=1e-4,2e-4", f"run_dir={run_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    calls = fake_sbatch.calls(bin_dir)
    assert len(calls) == 2
    for index, (call, lr) in enumerate(zip(calls, ("0.0001", "0.0002"))):
        point = run_dir / f"{index}_optim.lr-{lr}"
        assert call["args"] == ["--parsable", str(point / "launch.sbatch")]
        assert f"optim.lr={lr}" in call["script"] and f"run_dir={point}" in call["script"]
    first = f"    1 submitted   optim.lr=0.0001  {run_dir}/0_optim.lr-0.0001 (job 1001)"
    assert first in done.stdout.splitlines()
    record = json.loads((run_dir / "sweep.json").read_text())
    assert [(p["status"], p["detail"]) for p in record["points"]] == [
        ("submitted", "job 1001"),
        ("submitted", "job 1002"),
    ]
