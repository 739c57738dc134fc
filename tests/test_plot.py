"""`chimed plot`: curves from any runs' metrics.jsonl, resumed iterations counted once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_chimed.cli import main as chimed
from megatron_chimed.plot import find_curves


def _metrics(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + ['{"split": "train", "itera']  # cut by a kill
    path.write_text("\n".join(lines) + "\n")


def test_curves_of_two_runs_with_a_resume(tmp_path: Path) -> None:
    a, b = tmp_path / "cpt_a", tmp_path / "sweep"
    _metrics(a / "metrics.jsonl", [
        {"split": "train", "iteration": 1, "lm_loss": 3.0},
        {"split": "train", "iteration": 2, "lm_loss": 2.5},
        {"split": "train", "iteration": 2, "lm_loss": 2.4},  # the resumed run's value counts
        {"split": "valid", "iteration": 2, "lm_loss": 2.6},
    ])  # fmt: skip
    _metrics(b / "lr1" / "metrics.jsonl", [{"split": "train", "iteration": 1, "rm_loss": 0.7}])
    curves = {(c.label, c.split): c for c in find_curves([a, b])}
    assert curves[("cpt_a", "train")].points == [(1, 3.0), (2, 2.4)]
    assert curves[("cpt_a", "valid")].points == [(2, 2.6)]
    assert curves[("sweep/lr1", "train")].key == "rm_loss"
    out = tmp_path / "plot.png"
    assert chimed(["plot", str(a), str(b), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_folder_without_metrics_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        chimed(["plot", str(tmp_path)])
    assert exit_.value.code == 2
