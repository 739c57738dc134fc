"""One check's outcome, the line printed for it, the JSON report and the exit code."""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from megatron_chimed.atomic import atomic_write_text

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
# Agreement across ranks takes the highest code: one failing rank fails the check.
STATUS_CODES = {SKIP: 0, PASS: 1, FAIL: 2}


@dataclass
class CheckResult:
    """`figures` are the measured values (JSON types); `message` is the one-line summary."""

    name: str
    status: str
    figures: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status}  {self.name:<14} {self.message}  [{self.seconds:.1f} s]"


def verdict(name: str, ok: bool, figures: dict[str, Any], message: str) -> CheckResult:
    return CheckResult(name, PASS if ok else FAIL, figures, message)


def skipped(name: str, reason: str, figures: dict[str, Any] | None = None) -> CheckResult:
    return CheckResult(name, SKIP, figures or {}, reason)


def run_check(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
    """Run one check; an exception is its FAIL (with the traceback in the report), so one
    broken section does not hide the others."""
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as err:  # the check's own failure, reported, not re-raised
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        result = CheckResult(
            name,
            FAIL,
            {"traceback": traceback.format_exc().splitlines()[-12:]},
            f"{type(err).__name__}: {first}",
        )
    result.seconds = time.perf_counter() - start
    return result


def exit_code(results: list[CheckResult]) -> int:
    """0 when every check that ran passed, 1 when any failed (skips do not count)."""
    return 1 if any(r.status == FAIL for r in results) else 0


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_report(path: str | Path, results: list[CheckResult], meta: dict[str, Any]) -> None:
    """The whole run as JSON, written atomically (a crash never leaves half a report)."""
    report = {
        **meta,
        "exit_code": exit_code(results),
        "checks": [_json_safe(asdict(r)) for r in results],
    }
    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
