"""Render launch/slurm.sbatch from a `LauncherConfig`: the multi-node job script."""

from __future__ import annotations

import dataclasses
import re
import shlex
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from megatron_chimed.launch.config import LauncherConfig

TEMPLATE = Path(__file__).resolve().parents[2] / "launch" / "slurm.sbatch"
DEFAULT_MODULE = "megatron_chimed.train"


def sbatch_directives(cfg: LauncherConfig, log_dir: str) -> list[str]:
    """The `#SBATCH` lines: allocation, signal/requeue policy and the batch shell's log."""
    opts = [f"--job-name={cfg.job_name}", f"--nodes={cfg.nodes}", "--ntasks-per-node=1"]
    if cfg.gpus_per_node:
        opts.append(f"--gpus-per-node={cfg.gpus_per_node}")
    if cfg.cpus_per_task:
        opts.append(f"--cpus-per-task={cfg.cpus_per_task}")
    if cfg.mem is not None and not any(re.search(r"--mem\b", x) for x in cfg.sbatch_extra):
        opts.append(f"--mem={cfg.mem}")
    if cfg.partition:
        opts.append(f"--partition={cfg.partition}")
    if cfg.account:
        opts.append(f"--account={cfg.account}")
    opts += [
        f"--time={cfg.time}",
        # B: signal only the batch shell, which forwards it; the ranks must not see it twice.
        f"--signal=B:USR1@{cfg.signal_grace_s}",
        "--requeue" if cfg.requeue else "--no-requeue",
        # A requeued job keeps its id: append, so one log holds every start.
        "--open-mode=append",
        f"--output={log_dir}/%x-%j.log",
    ]
    if cfg.workdir:
        opts.append(f"--chdir={cfg.workdir}")
    lines = [f"#SBATCH {o}" for o in opts]
    lines += [x if x.startswith("#SBATCH") else f"#SBATCH {x}" for x in cfg.sbatch_extra]
    return lines


def _check_value(key: str, value: str) -> None:
    """Refuse a control character: a newline (or CR) would end the `#SBATCH`, export or
    command line the value is pasted into and start a shell line of its own."""
    for position, char in enumerate(value):
        if unicodedata.category(char) == "Cc":
            raise ValueError(
                f"{key}={value!r}: control character U+{ord(char):04X} at position {position}; "
                "a job script value must be one line of printable text"
            )


def check_rendered_values(cfg: LauncherConfig, overrides: Sequence[str]) -> None:
    """Every launcher value and override that reaches the job script is one line of text, and
    every exported name a shell variable name; errors name the key."""
    for spec in dataclasses.fields(cfg):
        key, value = f"launcher.{spec.name}", getattr(cfg, spec.name)
        if isinstance(value, str):
            _check_value(key, value)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                _check_value(f"{key}[{i}]", str(item))
        elif isinstance(value, dict):
            for name, item in value.items():
                # `export NAME=...`: the name is not quoted, so it must be a plain identifier.
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
                    raise ValueError(f"{key}: {name!r} is not an environment variable name")
                _check_value(f"{key}.{name}", str(item))
    for i, override in enumerate(overrides):
        _check_value(f"overrides[{i}]", override)


def _setup_lines(cfg: LauncherConfig) -> list[str]:
    lines = []
    if cfg.gpus_per_node:
        lines += [f"export {k}={shlex.quote(str(v))}" for k, v in cfg.gpu_env.items()]
    return lines + list(cfg.setup)


def render_sbatch(
    cfg: LauncherConfig,
    overrides: Sequence[str],
    module: str = DEFAULT_MODULE,
    *,
    log_dir: str = "logs",
    template: Path = TEMPLATE,
) -> str:
    """The job script running `torchrun ... -m module overrides` on `cfg.nodes` nodes.

    `overrides` reach the trainer unchanged (each shell-quoted); per-node logs go to
    `log_dir/<job>-<id>-node<N>.log`. Slurm does not create `log_dir`: the caller must. A
    control character in any value is an error naming its key (check_rendered_values).
    """
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", module):
        raise ValueError(f"module {module!r} is not a dotted Python module name")
    if re.search(r"\s", log_dir):
        raise ValueError(f"log_dir {log_dir!r} contains whitespace, which #SBATCH cannot quote")
    check_rendered_values(cfg, overrides)
    fields = {
        "SBATCH": "\n".join(sbatch_directives(cfg, log_dir)),
        "REQUEUE": "1" if cfg.requeue else "0",
        "SETUP": "\n".join(_setup_lines(cfg)) or "# (no setup lines)",
        "MASTER_PORT": str(cfg.master_port),
        "NODE_LOG": shlex.quote(f"{log_dir}/%x-%j-node%n.log"),
        "LOG_DIR": shlex.quote(log_dir),
        "TORCHRUN": cfg.torchrun,
        "NPROC": str(cfg.nproc_per_node),
        "MODULE": module,
        "OVERRIDES": " ".join(shlex.quote(o) for o in overrides),
    }
    text = Path(template).read_text()
    unknown = sorted(set(re.findall(r"@([A-Z_]+)@", text)) - fields.keys())
    if unknown:
        raise ValueError(f"template {template} has unknown fields {unknown}")
    # One pass: values (setup lines, overrides) are never scanned for fields themselves.
    return re.sub(r"@([A-Z_]+)@", lambda m: fields[m.group(1)], text)
