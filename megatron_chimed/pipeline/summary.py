"""`summary.md` (stage, steps, final loss or accuracy, time) and `loss_curves.png` of a run."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.pipeline.steps import read_marker
from megatron_chimed.plot import curves_of, draw, loss_key, read_metrics

TRAINING_STEPS = ("cpt", "sft", "rm", "rs")


def stage_metrics(run_dir: Path, step: str) -> list[Path]:
    """Every metrics.jsonl a training step wrote (RS writes one per fine-tuning round)."""
    return sorted((run_dir / step).rglob("metrics.jsonl"))


def _final(run_dir: Path, step: str) -> tuple[str, str]:
    """(iterations, headline result) of one step for the summary table."""
    files = stage_metrics(run_dir, step)
    if not files:
        return "", ""
    train = read_metrics(files[-1]).get("train", {})
    if not train:
        return "", ""
    last = train[max(train)]
    key = loss_key(last)
    result = f"{key} {last[key]:.4f}" if key else ""
    report = run_dir / step / "rm_test_report.json"
    if report.is_file():
        accuracy = json.loads(report.read_text()).get("pairwise_accuracy")
        result += f", test pairwise accuracy {accuracy:.3f}"
    report = run_dir / step / "rs_report.json"
    if report.is_file():
        scores = [r["score"] for r in json.loads(report.read_text()).values() if "score" in r]
        if scores:
            result += (f", reward mean {scores[-1]['mean']:.3f}, best-of-N gain "
                       f"{scores[-1]['best_of_n_gain']:.3f}")  # fmt: skip
    return str(max(train)), result


def _eval_lines(run_dir: Path) -> list[str]:
    lines = []
    for path in sorted((run_dir / "eval").glob("*.md")):
        lines += ["", f"### Evaluation ({path.name})", "", path.read_text(encoding="utf-8")]
    return lines


def plot_losses(run_dir: Path, out: Path) -> bool:
    """One panel per training step (and RS round) of the pipeline."""
    curves = []
    for step in TRAINING_STEPS:
        for path in stage_metrics(run_dir, step):
            label = step if path.parent == run_dir / step else f"{step}/{path.parent.name}"
            curves += [c for c in curves_of(path, label) if c.split == "train" and c.points]
    if curves:
        draw(curves, out, panel_by="label")
    return bool(curves)


def write_summary(run_dir: Path, steps: list[str]) -> str:
    rows = ["| step | iterations | final | time (s) |", "|---|---|---|---|"]
    for step in steps:
        done = read_marker(run_dir, step)
        iterations, result = _final(run_dir, step) if step in TRAINING_STEPS else ("", "")
        seconds = f"{done['seconds']:.0f}" if done else "not run"
        rows.append(f"| {step} | {iterations} | {result} | {seconds} |")
    plotted = plot_losses(run_dir, run_dir / "loss_curves.png")
    text = "\n".join(
        ["# megatron-chimed pipeline", "", f"Run: `{run_dir}`", "", *rows,
         *(["", "![loss curves](loss_curves.png)"] if plotted else []), *_eval_lines(run_dir), ""]
    )  # fmt: skip
    atomic_write_text(run_dir / "summary.md", text)
    return text
