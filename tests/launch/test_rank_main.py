"""A user error or a start-up Ctrl-C inside the ranks: one line, once, no tracebacks, non-zero.

In process: `report_errors`, the rank's side. Under the launcher (launch/torchrun.py) on two
ranks of the probe: a user error on every rank or on one, and a Ctrl-C during start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from megatron_chimed.config import ConfigError
from megatron_chimed.launch.rank_main import (
    ERROR_FILE_ENV,
    hand_over,
    is_user_error,
    read_report,
    report_errors,
)
from megatron_chimed.training import startup

REPO = Path(__file__).resolve().parents[2]
MESSAGE = "probe.fail: corpus.jsonl:3: field 'text' is missing (see --json-keys)"


@pytest.fixture
def plain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks started without our launcher (no error file), as rank 0."""
    for name in (ERROR_FILE_ENV, "CHIMED_DEBUG", "RANK"):
        monkeypatch.delenv(name, raising=False)


def _raise(err: BaseException):
    def call() -> int:
        raise err

    return call


def test_user_errors_are_known_by_name() -> None:
    from megatron_chimed.checkpoint import CheckpointError
    from megatron_chimed.data.jsonio import DataError
    from megatron_chimed.eval.errors import DataFormatError
    from megatron_chimed.reward.data import MissingResponse
    from megatron_chimed.training.run_lock import RunLocked

    users = [ConfigError("k"), DataError("f:1", "text", "missing"), DataFormatError("f:1"),
             CheckpointError("c"), RunLocked("r"), MissingResponse("f:2", "chosen", "missing"),
             FileNotFoundError("x"), PermissionError("y")]  # fmt: skip
    assert [is_user_error(err) for err in users] == [True] * len(users)
    bugs = [ValueError("v"), KeyError("k"), RuntimeError("r"), AssertionError("a")]
    assert [is_user_error(err) for err in bugs] == [False] * len(bugs)


def test_plain_rank0_prints_the_line_once(plain: None, capsys: pytest.CaptureFixture) -> None:
    assert report_errors("chimed train", _raise(FileNotFoundError("data/x.bin not found"))) == 2
    assert capsys.readouterr().err == "chimed train: data/x.bin not found\n"
    # A message that names the command already is not prefixed twice.
    assert report_errors("chimed eval", _raise(ConfigError("chimed eval: no task"))) == 2
    assert capsys.readouterr().err == "chimed eval: no task\n"


def test_plain_other_ranks_stay_quiet(
    plain: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("RANK", "1")
    assert report_errors("chimed train", _raise(ConfigError("bad"))) == 2
    assert capsys.readouterr().err == ""


def test_a_bug_keeps_its_traceback_and_debug_keeps_every_one(
    plain: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(KeyError):
        report_errors("chimed train", _raise(KeyError("layer")))
    monkeypatch.setenv("CHIMED_DEBUG", "1")
    with pytest.raises(ConfigError):
        report_errors("chimed train", _raise(ConfigError("bad")))


def test_under_the_launcher_the_first_report_wins_and_consequences_are_quiet(
    plain: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    error_file = tmp_path / "error.json"
    monkeypatch.setenv(ERROR_FILE_ENV, str(error_file))
    with pytest.raises(RuntimeError):  # a bug, before anyone reported: still a traceback
        report_errors("chimed train", _raise(RuntimeError("bug")))
    assert report_errors("chimed train", _raise(ConfigError("first\nline"))) == 0
    assert report_errors("chimed train", _raise(ConfigError("second"))) == 0
    # A rank whose collective broke because the reporting rank left: quiet.
    assert report_errors("chimed train", _raise(RuntimeError("Connection closed by peer"))) == 0
    assert read_report(error_file) == (2, "first line")
    assert capsys.readouterr().err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["error.json"]  # no temp file left
    assert not hand_over(error_file, 2, "third")


def test_a_startup_interruption_is_status_130(plain: None, capsys: pytest.CaptureFixture) -> None:
    assert report_errors("chimed train", _raise(startup.StartupInterrupted())) == 130
    assert capsys.readouterr().err == "chimed train: interrupted during start-up; nothing to save\n"


LAUNCHER = (
    "import sys; from megatron_chimed.launch.torchrun import torchrun; "
    "sys.exit(torchrun('megatron_chimed.testing.launch_probe', 2, sys.argv[1:], preemptible=True,"
    " name='chimed train'))"
)


def _launch(run_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("CHIMED_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, f"run_dir={run_dir}", *args],
        cwd=REPO, env=env, start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _assert_one_clean_line(out: str, line: str) -> None:
    assert out.splitlines().count(line) == 1, out
    for noise in ("Traceback", "ChildFailedError", "FAILED", "exitcode"):
        assert noise not in out, out


@pytest.mark.distributed
@pytest.mark.parametrize("failing", ["all", "1"])
def test_a_user_error_in_the_ranks_is_one_line(tmp_path: Path, failing: str) -> None:
    start = time.monotonic()
    proc = _launch(tmp_path, f"probe.fail={failing}", "probe.steps=3")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    _assert_one_clean_line(out, f"chimed train: {MESSAGE}")
    # One failing rank: the other, waiting for it in a collective, is stopped soon after.
    assert time.monotonic() - start < 60


@pytest.mark.distributed
def test_ctrl_c_during_start_up_ends_the_run_in_one_line(tmp_path: Path) -> None:
    proc = _launch(tmp_path, "probe.startup_s=60", "probe.steps=3")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout))
    reader.start()
    deadline = time.monotonic() + 60
    starting = [tmp_path / "probe" / f"starting{rank}" for rank in (0, 1)]
    while not all(p.exists() for p in starting):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.05)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C reaches the launcher's group
    status = proc.wait(timeout=60)
    reader.join(timeout=10)
    out = "".join(lines)
    assert status == 130, out
    assert time.monotonic() - t0 < 15  # not after the 60 s start-up
    _assert_one_clean_line(out, "chimed train: interrupted during start-up; nothing to save")
    assert not (tmp_path / "checkpoints" / "latest").exists()
    events = list((tmp_path / "probe").glob("rank*.jsonl"))
    assert events == []  # no rank got past its start-up
