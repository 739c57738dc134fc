"""The run configuration: `schema` (every config dataclass; no torch), `eval` (the eval tasks'
dataclasses) and `load` (compose with Hydra, validate, errors naming the key)."""

from megatron_chimed.config.load import (
    CONF_DIR,
    ConfigError,
    compose,
    eval_section,
    eval_task,
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
    "eval_section",
    "eval_task",
    "load",
    "validate",
]
