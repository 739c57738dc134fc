"""The `launcher` config group: how a run is started (in-process, torchrun, or Slurm).

The same Hydra config drives a laptop run, a single-node torchrun and a multi-node sbatch; only
this group changes. `LauncherConfig` is its typed schema: unknown keys and wrong types are errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from megatron_chimed.config.launcher import (  # noqa: F401 (re-exported: the launcher's API)
    KINDS,
    LauncherConfig,
    default_gpu_env,
    time_limit_seconds,
)


def to_launcher_config(node: DictConfig | dict) -> LauncherConfig:
    """Validate a `launcher` node against the schema (unknown keys, types, values)."""
    merged = OmegaConf.merge(OmegaConf.structured(LauncherConfig), node)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def compose_launcher(
    overrides: Sequence[str],
    conf_dir: Path | None = None,
    config_name: str = "config",
    check_all: bool = False,
) -> tuple[LauncherConfig, str | None]:
    """Compose the Hydra config (megatron_chimed.config.compose); return (launcher, run_dir).

    The launcher group is always validated; `check_all` validates the whole run config too, so
    that a typo fails at submission instead of when the job starts after hours in the queue.
    """
    from megatron_chimed import config  # Hydra and the stage schemas: only when composing

    cfg = config.compose(overrides, config_name, conf_dir)
    if check_all:
        config.validate(cfg)
    run_dir = cfg.get("run_dir")
    return to_launcher_config(cfg.get("launcher") or {}), (str(run_dir) if run_dir else None)
