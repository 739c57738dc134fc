"""A stand-in `sbatch` for tests of what is submitted, where no Slurm is installed.

`install(bin_dir)` writes an executable `sbatch` into `bin_dir`: put that folder first on PATH.
Each call appends one JSON line to `bin_dir/sbatch.calls.jsonl` with its arguments and the text
of the job script it was given (the last argument), and prints a job id, 1001, 1002, ..., as
`sbatch --parsable` does. It runs nothing. The real cluster on loopback (slurm_cluster.py) runs
the jobs; this one only answers, in milliseconds and without root.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCRIPT = """#!{python}
import json, sys
from pathlib import Path
here = Path(__file__).resolve().parent
calls = here / "sbatch.calls.jsonl"
previous = calls.read_text().splitlines() if calls.exists() else []
script = Path(sys.argv[-1])
entry = {{"args": sys.argv[1:], "script": script.read_text() if script.is_file() else None}}
with open(calls, "a") as f:
    f.write(json.dumps(entry) + "\\n")
print(1001 + len(previous))
"""


def install(bin_dir: Path) -> Path:
    """The fake `sbatch` in `bin_dir` (created); returns its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "sbatch"
    path.write_text(SCRIPT.format(python=sys.executable))
    path.chmod(0o755)
    return path


def calls(bin_dir: Path) -> list[dict]:
    """Every call so far: {"args": [...], "script": text of the job script}."""
    path = bin_dir / "sbatch.calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
