"""The run configuration: `schema` (every config dataclass; no torch) and `load` (compose with
Hydra, validate, errors naming the key)."""

from megatron_chimed.config.load import (
    CONF_DIR,
    ConfigError,
    compose,
    eval_task_keys,
    load,
    validate,
)
from megatron_chimed.config.schema import PRECISIONS, RunConfig

__all__ = [
    "CONF_DIR",
    "PRECISIONS",
    "ConfigError",
    "RunConfig",
    "compose",
    "eval_task_keys",
    "load",
    "validate",
]
