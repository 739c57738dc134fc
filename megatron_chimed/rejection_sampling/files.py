"""The files between RS phases: one folder per phase, shards written whole, a DONE marker.

    run_dir/rs/round_<r>/<phase>/shard_00000.jsonl ...   each written atomically (temp + rename)
    run_dir/rs/round_<r>/<phase>/DONE                     JSON: the phase's statistics
    run_dir/rs_phases.jsonl                               one line per phase start/skip/done
    run_dir/rs_report.json                                every finished phase's statistics

A phase with DONE is skipped; a shard whose file exists is not redone. A killed job therefore
loses at most the shards in flight, and a rerun finds the same work left.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.data.jsonio import iter_jsonl

DONE = "DONE"
PHASE_LOG = "rs_phases.jsonl"
REPORT = "rs_report.json"


def round_dir(run_dir: str | Path, round_index: int) -> Path:
    return Path(run_dir) / "rs" / f"round_{round_index}"


def phase_dir(run_dir: str | Path, round_index: int, phase: str) -> Path:
    return round_dir(run_dir, round_index) / phase


def final_policy(run_dir: str | Path) -> Path:
    """The rs stage's result: the checkpoints the last round fine-tuned."""
    rounds = sorted((Path(run_dir) / "rs").glob("round_*"), key=lambda p: int(p.name.split("_")[1]))
    if not rounds:
        raise FileNotFoundError(f"{run_dir}: no rejection-sampling round has run")
    return phase_dir(run_dir, int(rounds[-1].name.split("_")[1]), "train") / "checkpoints"


def shard_path(folder: Path, shard: int) -> Path:
    return folder / f"shard_{shard:05d}.jsonl"


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def read_shards(folder: Path, count: int) -> Iterator[dict]:
    """The rows of shards 0..count-1 in order; a missing shard is an error that names it."""
    for shard in range(count):
        path = shard_path(folder, shard)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing, but {folder / DONE} says the phase is done")
        yield from read_jsonl(path)


def read_done(folder: Path) -> dict | None:
    """The statistics of a finished phase, or None when it has not finished."""
    marker = folder / DONE
    return json.loads(marker.read_text()) if marker.is_file() else None


def mark_done(folder: Path, stats: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / DONE, json.dumps(stats, indent=2, ensure_ascii=False))


def log_event(run_dir: str | Path, round_index: int, phase: str, event: str, **extra) -> None:
    """Append to the phase log (rank 0): what ran when, so a resumed job shows what it skipped.
    A line cut by a kill is the last one and harms nobody: the log is read, never resumed."""
    line = {"time": time.time(), "round": round_index, "phase": phase, "event": event, **extra}
    with open(Path(run_dir) / PHASE_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")


def write_report(run_dir: str | Path, rounds: int, phases: Iterable[str]) -> dict:
    """Gather every finished phase's statistics into rs_report.json (rank 0); return it."""
    phases = list(phases)
    report = {
        f"round_{r}": {p: s for p in phases if (s := read_done(phase_dir(run_dir, r, p)))}
        for r in range(rounds)
    }
    atomic_write_text(Path(run_dir) / REPORT, json.dumps(report, indent=2, ensure_ascii=False))
    return report
