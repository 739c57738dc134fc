"""Repeat a task over seeds, aggregate mean/std, and write the JSON result + Markdown table and
every prediction as JSON Lines.

The paper runs every experiment five times and reports the mean (footnote 5). A task whose
score cannot depend on the seed (log-prob multi-choice) runs once; the result says so.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Protocol

from megatron_chimed.atomic import atomic_open, atomic_write_text

from .model_api import EvalModel


class EvalTask(Protocol):
    deterministic: bool

    def meta(self) -> dict[str, Any]: ...

    def run(self, model: EvalModel, seed: int) -> dict[str, Any]: ...


def run_over_seeds(name: str, task: EvalTask, model: EvalModel, seeds: list[int]) -> dict[str, Any]:
    if not seeds:
        raise ValueError(f"eval {name}: no seeds configured")
    used = seeds[:1] if task.deterministic else list(seeds)
    runs = [{"seed": seed, **task.run(model, seed)} for seed in used]
    # Every question's record, kept out of the results JSON (which holds a few samples) and
    # written to its own JSON Lines file by write_results: one line per question and seed.
    predictions = [{**p, "seed": run["seed"]} for run in runs for p in run.pop("predictions", [])]
    return {
        "task": name,
        "meta": task.meta(),
        "seeds": used,
        "deterministic": task.deterministic,
        "mean": {k: _mean([r["metrics"][k] for r in runs]) for k in runs[0]["metrics"]},
        "std": {k: _std([r["metrics"][k] for r in runs]) for k in runs[0]["metrics"]},
        # e.g. unparseable answers: a low score with many of them is a format problem.
        "counts_mean": {k: _mean([r["counts"][k] for r in runs]) for k in runs[0]["counts"]},
        "runs": runs,
        "predictions": predictions,
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else float("nan")


def _std(values: list[float]) -> float:
    """Sample standard deviation (n-1) over the runs; 0 for a single run."""
    finite = [v for v in values if not math.isnan(v)]
    return statistics.stdev(finite) if len(finite) > 1 else 0.0


def _json_safe(value: Any) -> Any:
    # NaN is not JSON; null says "not measured" to every JSON reader.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per (task, metric): mean ± std over the runs."""
    lines = ["| task | metric | mean | std | runs |", "|---|---|---:|---:|---:|"]
    for result in results:
        for metric, mean in result["mean"].items():
            std = result["std"][metric]
            shown = "n/a" if mean is None or math.isnan(mean) else f"{mean:.2f}"
            lines.append(
                f"| {result['task']} | {metric} | {shown} | {std:.2f} | {len(result['seeds'])} |"
            )
    notes = [
        f"- {r['task']}: " + json.dumps({**r["meta"], **r["counts_mean"]}, ensure_ascii=False)
        for r in results
    ]
    return "\n".join(lines + [""] + notes) + "\n"


def predictions_path(out_dir: Path, stem: str, task: str) -> Path:
    """`{stem}.predictions.jsonl` beside `{stem}.json`; a suite's task adds its own name."""
    name = stem if task == stem else f"{stem}.{task}"
    return Path(out_dir) / f"{name}.predictions.jsonl"


def write_results(
    out_dir: Path, stem: str, results: list[dict[str, Any]], run_info: dict[str, Any] | None = None
) -> tuple[Path, Path, list[Path]]:
    """`{stem}.json`, `{stem}.md` and one predictions file per task, each written atomically."""
    json_path = Path(out_dir) / f"{stem}.json"
    md_path = Path(out_dir) / f"{stem}.md"
    written = []
    for result in results:
        path = predictions_path(Path(out_dir), stem, result["task"])
        with atomic_open(path) as f:
            for record in result.get("predictions", []):
                f.write(json.dumps(_json_safe(record), ensure_ascii=False, allow_nan=False) + "\n")
        written.append(path)
    kept = [{k: v for k, v in r.items() if k != "predictions"} for r in results]
    payload = kept[0] if len(kept) == 1 else {"tasks": kept}
    payload = _json_safe({**payload, "run": run_info} if run_info else payload)
    atomic_write_text(json_path, json.dumps(payload, ensure_ascii=False, indent=2, allow_nan=False))
    atomic_write_text(md_path, markdown_table(results))
    return json_path, md_path, written
