"""Whether processes a test started (or their helpers) are gone."""

from __future__ import annotations

import time
from collections.abc import Iterable

import psutil


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie. An orphan's parent is init, which in a container
    may never reap it, so a dead process can stay a zombie for the test's whole life."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: Iterable[int], timeout: float) -> float | None:
    """Seconds until every pid is gone, or None if one outlives `timeout`."""
    pids, start = list(pids), time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        if all(gone(pid) for pid in pids):
            return elapsed
        if elapsed > timeout:
            return None
        time.sleep(0.05)
