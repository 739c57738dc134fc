"""`chimed plot RUN_DIR [RUN_DIR ...] [--out FILE]`: loss curves of any runs, side by side.

Every `metrics.jsonl` under each folder is a curve (a stage run, an RS round, a pipeline step),
labelled by its folder. Curves that log the same loss share a panel, so two runs of one stage
compare on one plot; validation points are drawn dashed beside the training line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Curve:
    label: str
    key: str  # the loss logged, e.g. lm_loss
    split: str  # train | valid
    points: list[tuple[int, float]]


def read_metrics(path: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """metrics.jsonl as {split: {iteration: record}}; a resumed run repeats some iterations,
    and the last record of an iteration is the one that counts. A line cut short by a killed
    job is skipped."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "split" in record and "iteration" in record:
            out.setdefault(record["split"], {})[record["iteration"]] = record
    return out


def loss_key(record: dict[str, Any]) -> str | None:
    return next((k for k in record if k.endswith("loss")), None)


def curves_of(path: Path, label: str) -> list[Curve]:
    """The train and valid loss curves of one metrics.jsonl."""
    curves = []
    for split, records in sorted(read_metrics(path).items()):
        key = loss_key(next(iter(records.values()), {}))
        if key:
            points = [(i, float(r[key])) for i, r in sorted(records.items()) if key in r]
            curves.append(Curve(label, key, split, points))
    return curves


def find_curves(run_dirs: list[Path]) -> list[Curve]:
    """Every metrics.jsonl under each folder (or the file itself), labelled by its folder."""
    curves = []
    for run_dir in run_dirs:
        files = [run_dir] if run_dir.is_file() else sorted(run_dir.rglob("metrics.jsonl"))
        for path in files:
            where = path.parent.relative_to(run_dir) if run_dir.is_dir() else Path()
            label = run_dir.name if str(where) == "." else f"{run_dir.name}/{where}"
            curves += curves_of(path, label)
    return curves


def draw(curves: list[Curve], out: Path, panel_by: str = "key") -> None:
    """One panel per loss key (`panel_by="key"`) or per curve label (`"label"`), written
    atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    panels: dict[str, list[Curve]] = {}
    for curve in curves:
        panels.setdefault(getattr(curve, panel_by), []).append(curve)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (title, members) in zip(axes[0], panels.items()):
        for curve in members:
            name = curve.label if panel_by == "key" else curve.split
            dashed = curve.split != "train"
            ax.plot(*zip(*curve.points), marker="." if not dashed else "o",
                    linestyle="--" if dashed else "-",
                    label=f"{name} ({curve.split})" if panel_by == "key" else name)  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_ylabel(members[0].key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="chimed plot", description=__doc__.split("\n")[0])
    ap.add_argument("run_dirs", nargs="+", type=Path, help="run folders or metrics.jsonl files")
    ap.add_argument("--out", type=Path, default=Path("loss_curves.png"), help="PNG to write")
    args = ap.parse_args(argv)
    missing = [str(d) for d in args.run_dirs if not d.exists()]
    if missing:
        ap.error(f"no such folder: {', '.join(missing)}")
    curves = [c for c in find_curves(args.run_dirs) if c.points]
    if not curves:
        ap.error(f"no metrics.jsonl with a loss under {', '.join(map(str, args.run_dirs))}")
    draw(curves, args.out)
    print(f"wrote {args.out}: {len(curves)} curve(s) from {len(args.run_dirs)} run(s)")
    return 0
