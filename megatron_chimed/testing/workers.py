"""Run a worker script under torchrun (gloo on CPU) and hand its JSON results to the test.

Each launch costs ~5-10 s of start-up, so one worker script runs many checks and writes them
all to one JSON file; the pytest functions then assert on that file.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
from pathlib import Path

from megatron_chimed.launch.torchrun import torchrun_command

ROOT = Path(__file__).resolve().parents[2]  # the repository (an editable install)


def free_port() -> int:
    """A TCP port free now for torchrun's --master_port, below the ephemeral range (32768+):
    the job binds it seconds later, and an ephemeral port may meanwhile be taken by any outgoing
    connection on this busy machine (gloo opens many): seen as EADDRINUSE in a job."""
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("", port))  # all addresses, as torchrun's store binds
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port in 20000-31999")


def torchrun(
    script: str | Path,
    nproc: int,
    *args: str,
    timeout: float = 600,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=nproc script args...` on loopback; output captured. A relative
    `script` is relative to the repository."""
    cmd = torchrun_command(str(ROOT / script), nproc, args, script=True)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"torchrun {script} failed ({proc.returncode})\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-8000:]}"
        )
    return proc


def run_worker(script: str | Path, nproc: int, out: Path, *args: str, **kw) -> dict:
    """Run a worker that writes its results to `out` (JSON) and return them."""
    torchrun(script, nproc, "--out", str(out), *args, **kw)
    return json.loads(out.read_text())
