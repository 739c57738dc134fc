"""`chimed <command> [hydra overrides...]`: the one console script.

Commands that need several processes re-launch themselves under torchrun, so a user types the
same line on a laptop and in an sbatch script.
"""

from __future__ import annotations

import os
import subprocess
import sys

USAGE = """usage: chimed <command> [key=value ...]
commands:
  pipeline   the whole demo pipeline on the bundled tiny default (CPU, TP=2)
  smoke      build the model and run one forward/backward
"""


def _torchrun(module: str, nproc: int, args: list[str]) -> int:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={os.environ.get('MASTER_PORT', '29500')}",
        "-m",
        module,
        *args,
    ]
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "smoke":
        return _torchrun("megatron_chimed.smoke", 2, rest)
    if command == "pipeline":
        # Until the stages land, the pipeline is the TP=2 smoke run of the tiny model.
        rest = [o for o in rest if not o.startswith(("experiment=", "run_dir="))]
        return _torchrun("megatron_chimed.smoke", 2, ["parallel=tp2_cpu", *rest])
    print(f"chimed: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
