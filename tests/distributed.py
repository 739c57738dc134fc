"""Run a worker script under torchrun (gloo on CPU) and hand its JSON results to the test.

Each launch costs ~5-10 s of start-up, so one worker script runs many checks and writes them
all to one JSON file; the pytest functions then assert on that file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(
    script: str | Path,
    nproc: int,
    *args: str,
    timeout: float = 600,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=nproc script args...` on loopback; output captured."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(script),
        *args,
    ]
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
