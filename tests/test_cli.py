"""`chimed`: the command table, `--help` on every Hydra command, `--cfg job`."""

from __future__ import annotations

import pytest

from megatron_chimed import cli


@pytest.mark.parametrize("command", sorted(cli.HYDRA_EXAMPLES))
def test_help_lists_groups_and_an_example(command: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main([command, "--help"]) == 0  # Hydra would have failed to parse "--help"
    out = capsys.readouterr().out
    assert f"usage: chimed {command}" in out
    assert "stage=       cpt, rm, rs, sft" in out
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
