"""The one way we start ranks on this node: `python -m torch.distributed.run` (torchrun).

`chimed train|smoke|eval|gpu-check` re-launch themselves with it and `chimed pipeline` runs each
stage with it; launch/torchrun.sh (one node, by hand) and the Slurm job script start torchrun
from the shell with the same environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from megatron_chimed.config.schema import default_gpu_env


def torchrun_command(module: str, nproc: int, args: Sequence[str]) -> list[str]:
    """`python -m module args` on `nproc` local ranks; --standalone picks a free port, so two
    jobs on one node never collide."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", module, *args]  # fmt: skip


def torchrun_env() -> dict[str, str]:
    """The GPU settings a Slurm job exports (config/schema.py default_gpu_env), unless the user
    set them: they are read when each rank creates its CUDA context, too late to set inside."""
    return {**default_gpu_env(), **os.environ}


def torchrun(module: str, nproc: int, args: Sequence[str]) -> int:
    """Run the ranks to completion; their exit status."""
    return subprocess.call(torchrun_command(module, nproc, args), env=torchrun_env())
