"""Training metrics: a console line, TensorBoard scalars and `run_dir/metrics.jsonl` (rank 0).

The JSONL file is the one to plot: one object per logged step, flushed at once, appended
across restarts (a resumed job may repeat the steps after its last checkpoint; the latest
line for a step wins).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("megatron_chimed.train")


class MetricsLogger:
    def __init__(
        self, run_dir: str | Path, enabled: bool, tensorboard: bool = True, total_iters: int = 0
    ) -> None:
        self.enabled = enabled
        self.total_iters = total_iters  # > 0: training lines end with the time left
        self.writer = None
        self.jsonl = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, split: str, iteration: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"split": split, "iteration": iteration, "time": time.time(), **values}
        self.jsonl.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{split}/{name}", value, iteration)
            self.writer.flush()
        shown = " | ".join(f"{k} {_fmt(v)}" for k, v in values.items())
        if split == "train" and self.total_iters and "step_s" in values:
            shown += f" | ETA {eta(self.total_iters - iteration, values['step_s'])}"
        log.info("%s iter %d | %s", split, iteration, shown)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.writer is not None:
            self.writer.close()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.4f}"
    return str(value)


def eta(steps_left: int, step_s: float) -> str:
    """Time left at the current step time: `1d03h`, `2h05m`, `4m10s`."""
    s = max(0, round(steps_left * step_s))
    days, hours, minutes = s // 86400, s // 3600 % 24, s // 60 % 60
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{s % 60:02d}s"
