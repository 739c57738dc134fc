"""Compose `conf/` with Hydra, merge it into the typed schema (config/schema.py), validate.

Validation merges the composed YAML into the structured schema, so an unknown key or a wrong
type fails at start, naming the key, instead of days into a run. `data` and `eval` have one shape
per stage / task kind: they are typed as the selected stage's data schema and as the dataclass of
each eval task's kind (config/eval.py); `RunConfig.eval` holds the typed result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from megatron_chimed.config.checkpoint_model import (
    checkpoint_model,
    model_source,
    saved_model,
    user_model_keys,
)
from megatron_chimed.config.eval import EVAL_TASKS, EvalSuiteConfig, EvalTaskConfig
from megatron_chimed.config.schema import RunConfig
from megatron_chimed.stages import STAGES, import_object

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# `${pkg:sample_data/eval}` in conf/: a path inside the installed package, so the bundled sample
# data is found from any working folder (a relative path would depend on where one starts).
OmegaConf.register_new_resolver("pkg", lambda path: str(PACKAGE_DIR / path), replace=True)
# The user's own config folders, searched before CONF_DIR (see `compose`).
CONFIG_DIR_FLAG = "--config-dir"
CONFIG_PATH_ENV = "CHIMED_CONFIG_PATH"
USER_PROVIDER = "chimed-user"


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
        # training.seq_length is the one sequence length of a run (model, data, loop); a
        # data.seq_length the user sets as well must say the same, not be silently replaced.
        seq = data.get("seq_length")
        if seq is not None and seq != run.training.seq_length:
            raise ConfigError(
                f"data.seq_length={seq} and training.seq_length={run.training.seq_length} "
                "differ: set training.seq_length only (the stage uses it for the data too)"
            )
    section = getattr(run, spec.section) if spec.section else None
    if hasattr(section, "validate"):
        try:
            section.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from err


def eval_task(node: Any, where: str = "eval", kind: str | None = None) -> EvalTaskConfig:
    """One eval task typed as the dataclass of its `task` kind (`kind` when it names none);
    ConfigError naming `where`.<key> for an unknown key, a wrong type or a bad value."""
    if isinstance(node, EvalTaskConfig):
        return node
    kind = node.get("task") or kind
    if kind not in EVAL_TASKS:
        raise ConfigError(f"config key '{where}.task': {kind!r} is not one of {sorted(EVAL_TASKS)}")
    task: EvalTaskConfig = _typed(EVAL_TASKS[kind], node, where + ".")
    try:
        task.validate(where)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return task


def eval_section(node: Any) -> EvalSuiteConfig | EvalTaskConfig | None:
    """The `eval` group typed: a suite (it has `tasks`) with each task typed, or one task."""
    if node is None or isinstance(node, EvalSuiteConfig | EvalTaskConfig):
        return node
    if "tasks" not in node:
        return eval_task(node, "eval")
    suite: EvalSuiteConfig = _typed(EvalSuiteConfig, node, "eval.")
    suite.tasks = {
        str(name): eval_task(task, f"eval.tasks.{name}") for name, task in suite.tasks.items()
    }
    return suite


def validate(cfg: DictConfig | dict) -> RunConfig:
    """Merge a composed config into the typed schema; raise ConfigError naming the key."""
    run: RunConfig = _typed(RunConfig, cfg)
    node = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    _check_stage(run, node.get("data"))
    run.eval = eval_section(node.get("eval"))
    return run


def config_dirs(args: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(the user's config folders, the other arguments): `--config-dir DIR` (or `=DIR`, any
    number) first, then CHIMED_CONFIG_PATH's colon-separated folders, in the order given."""
    found: list[str] = []
    rest: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == CONFIG_DIR_FLAG:
            value = next(it, None)
            if value is None:
                raise ConfigError(f"{CONFIG_DIR_FLAG}: give a folder, e.g. {CONFIG_DIR_FLAG} DIR")
            found.append(value)
        elif arg.startswith(CONFIG_DIR_FLAG + "="):
            found.append(arg.partition("=")[2])
        else:
            rest.append(arg)
    where = [CONFIG_DIR_FLAG] * len(found)
    for entry in os.environ.get(CONFIG_PATH_ENV, "").split(":"):
        if entry:  # "a::b" or a trailing colon: nothing between them, nothing to search
            found.append(entry)
            where.append(CONFIG_PATH_ENV)
    dirs = []
    for name, value in zip(where, found):
        path = Path(value).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"{name}: config folder {value} does not exist")
        dirs.append(path)
    return dirs, rest


def compose(
    overrides: Sequence[str] = (), config_name: str = "config", conf_dir: Path | None = None
) -> DictConfig:
    """Compose `conf/` (or `conf_dir`) with Hydra overrides, outside of a @hydra.main app.

    The user's folders (`--config-dir DIR` among the overrides, CHIMED_CONFIG_PATH) are searched
    before `conf/`: their `model/mine.yaml` is `model=mine`, and a file named like one of ours
    takes its place."""
    dirs, rest = config_dirs(overrides)
    return _compose(dirs, rest, config_name, conf_dir)


def _compose(
    dirs: list[Path],
    overrides: list[str],
    config_name: str = "config",
    conf_dir: Path | None = None,
) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.config_store import ConfigStore
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    # The schema is the first entry of conf/config.yaml's defaults: every key it declares can be
    # overridden without Hydra's `+`, and a wrong type fails while composing.
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    directory = Path(conf_dir or CONF_DIR).resolve()
    # initialize_config_dir's own steps, with the user's folders ahead of ours: Hydra's
    # `hydra.searchpath` can only append, and a search path is fixed once Hydra is created.
    search_path = create_config_search_path(str(directory))
    for folder in dirs:
        search_path.prepend(USER_PROVIDER, f"file://{folder}", SearchPathQuery(provider="main"))
    backup = get_gh_backup()
    version.setbase("1.3")
    try:
        Hydra.create_main_hydra2(task_name="chimed", config_search_path=search_path)
        return hydra_compose(config_name=config_name, overrides=overrides)
    finally:
        restore_gh_from_backup(backup)


def _adopt_checkpoint_model(composed: DictConfig, dirs: list[Path], overrides: list[str]) -> None:
    """The model section of a run that starts from (or resumes) a checkpoint: the checkpoint's,
    with the user's own non-shape settings (config/checkpoint_model.py)."""
    source = model_source(composed.run_dir, composed.checkpoint.load)
    if source is None:
        return
    key, ckpt_dir = source
    try:
        saved, where = saved_model(ckpt_dir)
        model = OmegaConf.to_container(composed.model, resolve=True)
        # What the package's (or the user folders') default group says: fields that differ
        # were chosen, by an experiment for instance, even without a model= override.
        default = OmegaConf.to_container(_compose(dirs, []).model, resolve=True)
        chosen = user_model_keys(overrides, model, default)
        for name, value in checkpoint_model(model, chosen, saved, f"{key}: {where}").items():
            composed.model[name] = value
    except ValueError as err:  # omegaconf's ValidationError included
        raise ConfigError(str(err)) from err


def load(overrides: Sequence[str] = ()) -> RunConfig:
    """Compose and validate; any config problem is a ConfigError naming the key. A run that
    starts from a checkpoint builds that checkpoint's model (see `_adopt_checkpoint_model`)."""
    from hydra.errors import HydraException

    dirs, rest = config_dirs(overrides)
    try:
        composed = _compose(dirs, rest)
        _adopt_checkpoint_model(composed, dirs, rest)
    except HydraException as err:
        # The typed schema makes Hydra reject a bad key or type while composing; its message
        # (with the cause's `full_key`) names the key.
        cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else None
        key = getattr(cause, "full_key", None)
        detail = " ".join(str(err).split())
        raise ConfigError(f"config key {key!r}: {detail}" if key else detail) from err
    return validate(composed)
