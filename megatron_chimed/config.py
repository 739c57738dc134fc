"""The root config schema: Hydra composes `conf/`, this module types and validates it.

Each group has its dataclass next to the component it configures (ModelConfig in model/,
LauncherConfig in launch/ ...); `RunConfig` only assembles them. Validation merges the composed
YAML into the structured schema, so an unknown key or a wrong type fails at start, naming the
key, instead of days into a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from megatron_chimed.launch.config import LauncherConfig
from megatron_chimed.model.builder import ParallelConfig
from megatron_chimed.model.config import ModelConfig
from megatron_chimed.training.checkpointing import CheckpointConfig
from megatron_chimed.training.loop import TrainingConfig
from megatron_chimed.training.optim import OptimConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    precision: str = "bf16"
    seed: int = 1234
    run_dir: str = "runs/default"
    eval: Any = None  # the eval group (megatron_chimed/eval validates its own tasks)
    stage: str | None = None  # set by conf/stage/<name>.yaml: a key of training.stage.STAGES
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    data: Any = None  # the stage's data group; each stage validates its own (cpt: data/pretrain)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: expected one of {PRECISIONS}")


class ConfigError(ValueError):
    """A config that cannot work; the message names the key."""


def validate(cfg: DictConfig | dict) -> RunConfig:
    """Merge a composed config into the typed schema; raise ConfigError naming the key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        run: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        detail = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"config key {key!r}: {detail}") from err
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return run


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose `conf/` with Hydra overrides, outside of a @hydra.main app (tests, tools)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def load(overrides: Sequence[str] = ()) -> RunConfig:
    return validate(compose(overrides))
