"""Compose `conf/` with Hydra, merge it into the typed schema (config/schema.py), validate.

Validation merges the composed YAML into the structured schema, so an unknown key or a wrong
type fails at start, naming the key, instead of days into a run. `data` and `eval` have one shape
per stage / task kind: they are checked against the selected stage's data schema and the task
kind's known keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from megatron_chimed.config.schema import RunConfig
from megatron_chimed.stages import STAGES, import_object

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SUITE_KEYS = {"name", "seeds", "tasks"}


class ConfigError(ValueError):
    """A config that cannot work; the message names the key."""


def _typed(schema: type, node: Any, prefix: str = "") -> Any:
    """`node` merged into the dataclass `schema`; ConfigError naming `prefix` + the key."""
    if isinstance(node, DictConfig):
        # Hydra's `+key=` opens the struct flag of a composed config: re-check from plain data.
        node = OmegaConf.to_container(node)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as err:
        key = prefix + str(getattr(err, "full_key", None) or "")
        detail = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"config key {key!r}: {detail}") from err
    except ValueError as err:  # a __post_init__ check; its message names the key
        raise ConfigError(str(err)) from err


def _check_stage(run: RunConfig, data: Any) -> None:
    """The selected stage's `data` (types and keys only: the files are checked when the stage
    opens them) and its own section (e.g. `rs.reward_checkpoint` must be set)."""
    if run.stage not in STAGES:
        return
    spec = STAGES[run.stage]
    if data is not None:
        _typed(import_object(spec.data_schema), data, "data.")
    section = getattr(run, spec.section) if spec.section else None
    if hasattr(section, "validate"):
        try:
            section.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from err


@cache
def eval_task_keys() -> dict[str, frozenset[str]]:
    """Keys each eval task kind reads: those its files in conf/eval/ set (the tasks read the
    config with .get() and defaults, so a misspelt key would silently be the default)."""
    keys: dict[str, set[str]] = {}
    for path in sorted((CONF_DIR / "eval").glob("*.yaml")):
        task = OmegaConf.load(path)
        if "task" in task:
            keys.setdefault(str(task.task), set()).update(str(k) for k in task)
    return {kind: frozenset(names) for kind, names in keys.items()}


def _check_eval_task(task: Any, where: str) -> None:
    known = eval_task_keys()
    kind = task.get("task")
    if kind not in known:
        raise ConfigError(f"config key '{where}.task': {kind!r} is not one of {sorted(known)}")
    for key in task:
        if key not in known[kind]:
            raise ConfigError(f"config key '{where}.{key}': not a key of {kind} eval tasks")


def _check_eval(node: Any) -> None:
    if node is None:
        return
    if "tasks" not in node:
        _check_eval_task(node, "eval")
        return
    for key in node:
        if key not in SUITE_KEYS:
            raise ConfigError(f"config key 'eval.{key}': not a suite key {sorted(SUITE_KEYS)}")
    for name, task in node.tasks.items():
        _check_eval_task(task, f"eval.tasks.{name}")


def validate(cfg: DictConfig | dict) -> RunConfig:
    """Merge a composed config into the typed schema; raise ConfigError naming the key."""
    run: RunConfig = _typed(RunConfig, cfg)
    node = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    _check_stage(run, node.get("data"))
    _check_eval(node.get("eval"))
    return run


def compose(
    overrides: Sequence[str] = (), config_name: str = "config", conf_dir: Path | None = None
) -> DictConfig:
    """Compose `conf/` (or `conf_dir`) with Hydra overrides, outside of a @hydra.main app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore

    # The schema is the first entry of conf/config.yaml's defaults: every key it declares can be
    # overridden without Hydra's `+`, and a wrong type fails while composing.
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    directory = Path(conf_dir or CONF_DIR).resolve()
    with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def load(overrides: Sequence[str] = ()) -> RunConfig:
    """Compose and validate; any config problem is a ConfigError naming the key."""
    from hydra.errors import HydraException

    try:
        composed = compose(overrides)
    except HydraException as err:
        # The typed schema makes Hydra reject a bad key or type while composing; its message
        # (with the cause's `full_key`) names the key.
        cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else None
        key = getattr(cause, "full_key", None)
        detail = " ".join(str(err).split())
        raise ConfigError(f"config key {key!r}: {detail}" if key else detail) from err
    return validate(composed)
