"""run_log.py: what reaches the console and what only the command's log file, in a fresh process
(import-time warnings included) and record by record."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_chimed import run_log

REPO = Path(__file__).resolve().parents[1]
MEGATRON_FILE = "/venv/site-packages/megatron/core/optimizer/__init__.py"
TE = "Transformer Engine and Apex are not installed. Falling back to Torch optimizers."


def _record(name: str, level: int, message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def _warning(path: str, text: str) -> logging.LogRecord:
    return _record("py.warnings", logging.WARNING, f"{path}:25: UserWarning: {text}\n")


def test_console_keeps_ours_and_errors_and_drops_megatrons_notices() -> None:
    console = run_log.ConsoleFilter(rank0=True)
    assert console.filter(_record("megatron_chimed.train", logging.INFO, "train iter 1"))
    assert not console.filter(_record("megatron.core.optimizer", logging.INFO, "OptimizerConfig"))
    assert not console.filter(_record("megatron.core.models", logging.WARNING, "DEPRECATED"))
    assert console.filter(_record("megatron.core.models", logging.ERROR, "failed"))
    assert console.filter(_record("torch.distributed", logging.WARNING, "a torch warning"))
    assert not console.filter(_record("torch.distributed", logging.INFO, "a torch notice"))
    assert not console.filter(
        _record("megatron_chimed.x", logging.INFO, "kept", **{run_log.FILE_ONLY: True})
    )
    other_rank = run_log.ConsoleFilter(rank0=False)
    assert not other_rank.filter(_record("megatron_chimed.train", logging.INFO, "train iter 1"))
    assert other_rank.filter(_record("megatron_chimed.train", logging.WARNING, "slow rank"))


def test_library_warnings_go_to_the_file_ours_to_the_console() -> None:
    console = run_log.ConsoleFilter()
    assert not console.filter(_warning(MEGATRON_FILE, "The argument order has changed"))
    assert console.filter(_warning(f"{REPO}/megatron_chimed/data/x.py", "check your data"))


def test_te_apex_warning_hidden_on_cpu_once_on_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_log, "_on_gpu", lambda: False)
    console = run_log.ConsoleFilter()
    assert not console.filter(_warning(MEGATRON_FILE, TE))
    monkeypatch.setattr(run_log, "_on_gpu", lambda: True)
    shown = [console.filter(_warning(MEGATRON_FILE, TE)) for _ in range(3)]
    shown.append(console.filter(_warning(MEGATRON_FILE, "Apex is not installed. Torch Norm")))
    assert shown == [True, False, False, False]
    assert not run_log.ConsoleFilter(rank0=False).filter(_warning(MEGATRON_FILE, TE))


def test_log_path_beside_the_output() -> None:
    assert run_log.log_path_for("out/a.jsonl") == Path("out/a.jsonl.log")
    assert run_log.log_path_for("ckpt/mine", ".convert.log") == Path("ckpt/mine.convert.log")


PROBE = """
import logging, os, sys, warnings
from megatron_chimed import run_log
run_log.quiet_console()
# As megatron-core's import does, before any log file is known:
warnings.warn_explicit("{te}", UserWarning, "{megatron}", 25)
logging.getLogger("megatron.core.distributed").info("Params for bucket 1 (362816 elements)")
with run_log.command_log(sys.argv[1]):
    assert os.environ["CHIMED_LOG_FILE"] == sys.argv[1]
    logging.getLogger("megatron_chimed.train").info("train iter 1 | lm_loss 7.6")
    logging.getLogger("megatron.core.models").warning("GPTModel IS DEPRECATED")
    warnings.warn_explicit("FutureWarning text", FutureWarning, "/x/torch/utils.py", 3)
    run_log.echo("the result")
logging.getLogger("megatron_chimed.train").info("after the block")
print("env", os.environ.get("CHIMED_LOG_FILE"))
"""


def test_a_command_log_in_a_fresh_process(tmp_path: Path) -> None:
    log = tmp_path / "run" / "cmd.log"
    code = PROBE.format(te=TE, megatron=MEGATRON_FILE)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CHIMED_LOG_FILE", None)
    done = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The console: our lines, the result, nothing of megatron's, no library warning.
    assert done.stdout.splitlines() == ["the result", "env None"]
    console = [line.split(" ", 2)[2] for line in done.stderr.splitlines()]
    assert console == ["train iter 1 | lm_loss 7.6", "after the block"]
    # The file: everything while it was open, the records from before it opened included.
    kept = log.read_text()
    for text in (TE, "Params for bucket 1", "train iter 1", "GPTModel IS DEPRECATED",
                 "FutureWarning text", "the result", f"log: {log}"):  # fmt: skip
        assert kept.count(text) == 1, text
    assert "after the block" not in kept
