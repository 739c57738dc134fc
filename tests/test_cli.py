"""`chimed`: the command table, `--help` on every Hydra command, `--cfg job`."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest

from megatron_chimed import cli
from megatron_chimed.testing.logging_state import kept_logging


@pytest.mark.parametrize("command", sorted(cli.HYDRA_EXAMPLES))
def test_help_lists_groups_and_an_example(command: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main([command, "--help"]) == 0  # Hydra would have failed to parse "--help"
    out = capsys.readouterr().out
    assert f"usage: chimed {command}" in out
    assert "stage=       cpt, rm, rs, sft" in out
    if command in cli.SWEEPS:  # the sweep syntax is documented where the command is
        assert f"chimed {command} -m optim.lr=1e-4,2e-4 seed=range(1,3)" in out
    assert "parallel=    tp1, tp2, tp2_cpu, tp4" in out
    assert cli.HYDRA_EXAMPLES[command] in out


def test_cfg_job_prints_the_composed_config(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--cfg", "job", "stage=rm", "rm.margin=0.5"]) == 0
    out = capsys.readouterr().out
    assert "stage: rm" in out and "margin: 0.5" in out


def test_unknown_command_and_bare_call(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
    assert cli.main([]) == 2
    assert "gpu-check" in capsys.readouterr().out


def test_a_config_error_is_one_line_naming_the_key(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHIMED_DEBUG", raising=False)
    assert cli.main(["train", "stage=rm", "data.colums={prompt: q}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chimed train: config key 'data.colums':") and err.count("\n") == 1


def test_generate_in_batch_mode_keeps_a_log_beside_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def fake_main(argv: list[str]) -> int:  # stands in for generation/chat.py
        logging.getLogger("megatron_chimed.generation").info("answered 3 prompts")
        logging.getLogger("megatron.core.inference").info("engine settings ...")
        return 0

    monkeypatch.setitem(sys.modules, "fake_generate", types.SimpleNamespace(main=fake_main))
    monkeypatch.setitem(cli.COMMANDS, "generate", ("fake_generate", "chat or batch"))
    out = tmp_path / "answers.jsonl"
    with kept_logging():
        assert cli.main(["generate", "--checkpoint", "c", "--input", "q.jsonl", "--output",
                         str(out)]) == 0  # fmt: skip
        assert cli.main(["generate", "--checkpoint", "c", f"--output={out}"]) == 0
    kept = (tmp_path / "answers.jsonl.log").read_text()
    assert kept.count("answered 3 prompts") == 2 and kept.count("engine settings") == 2
    assert "engine settings" not in capsys.readouterr().err  # megatron's notices: the log
