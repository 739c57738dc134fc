"""Launching runs: the `launcher` config group and the Slurm job renderer."""

from megatron_chimed.launch.config import LauncherConfig, compose_launcher, to_launcher_config
from megatron_chimed.launch.sbatch import DEFAULT_MODULE, render_sbatch

__all__ = [
    "DEFAULT_MODULE",
    "LauncherConfig",
    "compose_launcher",
    "render_sbatch",
    "to_launcher_config",
]
