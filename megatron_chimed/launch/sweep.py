"""`chimed train|pipeline -m key=a,b key2=range(1,4) ...`: a sweep, one run per point.

The overrides are expanded as Hydra's basic sweeper does, with Hydra's own override parser:
`key=a,b` and `key=choice(a,b)` are choices, `key=range(start,stop[,step])` a range (stop
excluded), and several swept keys give every combination, in the order written. Quoting keeps a
comma in one value (`key='a,b'`); lists and dicts (`[1,2]`, `{a: 1}`) are values, not sweeps.

Point i runs in its own folder `RUN_DIR/<i>_<key-value_...>` (the swept keys and their values,
characters other than letters, digits, `.`, `+` and `-` replaced by `_`), so points never share
checkpoints and each resumes on its own when the sweep is started again. Locally the points run
one after another, each announced as `point i/N`; a failing point is reported and the sweep goes
on; a Ctrl-C stops the sweep. With `launcher=slurm` each point is one job, submitted through
launch/submit.py (the same checks, plan and job script as a single submission). At the end a
summary lists every point with its status; `RUN_DIR/sweep.json` keeps it (rewritten after each
point) and `RUN_DIR/sweep.log` the sweep's log. The exit status is 0 when every point succeeded
(or was submitted), 1 when any failed, 130 after a Ctrl-C.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_chimed import run_log
from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.config.load import CONFIG_DIR_FLAG, ConfigError

MULTIRUN_FLAGS = ("-m", "--multirun")
SUBMIT = Path(__file__).resolve().parents[2] / "launch" / "submit.py"
log = logging.getLogger("megatron_chimed.sweep")


@dataclass
class Point:
    index: int
    overrides: list[str]  # the point's overrides, its swept values resolved
    swept: list[tuple[str, str]] = field(default_factory=list)  # (key, value) of swept keys
    run_dir: str = ""
    status: str = "not run"  # ok | failed | submitted | interrupted | not run
    detail: str = ""

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.swept) or "(no swept key)"


def split_multirun(args: Sequence[str]) -> tuple[bool, list[str]]:
    """(whether `-m` / `--multirun` is among `args`, the other arguments)."""
    rest = [a for a in args if a not in MULTIRUN_FLAGS]
    return len(rest) != len(args), rest


def _split_config_dirs(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the `--config-dir DIR` arguments, as given, the overrides)."""
    dirs: list[str] = []
    rest: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == CONFIG_DIR_FLAG:
            dirs += [arg, next(it, "")]
        elif arg.startswith(CONFIG_DIR_FLAG + "="):
            dirs.append(arg)
        else:
            rest.append(arg)
    return dirs, rest


def expand(overrides: Sequence[str]) -> list[Point]:
    """Every point of the sweep, in Hydra's order; a ConfigError naming a bad override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    choices: list[list[tuple[str | None, str, str]]] = []
    for text in overrides:
        try:
            [override] = parser.parse_overrides([text])
        except OverrideParseException as err:
            raise ConfigError(f"override {text!r}: {str(err).splitlines()[0]}") from None
        if not override.is_sweep_override():
            choices.append([(None, "", text)])
            continue
        key = override.get_key_element()
        if override.is_interval_sweep():
            raise ConfigError(
                f"override {text!r}: interval() needs a sweeper plugin; list the values "
                "(key=a,b) or give a range (key=range(start,stop,step))"
            )
        if key.lstrip("+~") == "run_dir":
            raise ConfigError("run_dir cannot be swept: each point gets its own folder in it")
        values = list(override.sweep_string_iterator())
        if not values:
            raise ConfigError(f"override {text!r}: the sweep has no value")
        choices.append([(key.lstrip("+~"), value, f"{key}={value}") for value in values])
    points = []
    for index, combo in enumerate(itertools.product(*choices)):
        swept = [(key, value) for key, value, _ in combo if key is not None]
        points.append(Point(index, [text for _, _, text in combo], swept))
    return points


def point_folder(point: Point) -> str:
    """`<i>_<key-value_...>`: the point's folder name in the sweep's run_dir."""
    slug = "_".join(f"{key}-{value}" for key, value in point.swept)
    slug = re.sub(r"[^\w.+-]", "_", slug)[:100]
    return f"{point.index}_{slug}" if slug else str(point.index)


def _run_dir_of(overrides: list[str]) -> tuple[str, str]:
    """(run_dir, launcher kind) the point's config says (a ConfigError if it has an error)."""
    from megatron_chimed.config import load

    cfg = load(overrides)
    return str(cfg.run_dir), cfg.launcher.kind


def _submit(overrides: list[str]) -> tuple[bool, str]:
    """One Slurm job through launch/submit.py: (submitted, job id or why not)."""
    if not SUBMIT.is_file():
        return False, f"{SUBMIT} not found: sweeps on Slurm are submitted from a checkout"
    done = subprocess.run([sys.executable, str(SUBMIT), *overrides], capture_output=True,
                          text=True, check=False)  # fmt: skip
    for line in done.stderr.splitlines():  # the plan's verdict, a refusal
        log.info("  %s", line)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return False, lines[-1] if lines else f"submit.py exited {done.returncode}"
    return True, f"job {done.stdout.strip().splitlines()[-1]}" if done.stdout.strip() else "job"


def _run_local(
    command: str, overrides: list[str], dispatch: Callable[[list[str]], int]
) -> tuple[str, str]:
    from megatron_chimed.launch.torchrun import interrupted_runs, last_report

    before = interrupted_runs()
    try:
        status = dispatch([command, *overrides])
    except ConfigError as err:
        return "failed", str(err)
    except Exception as err:  # a failing point must not end the sweep; the log has the trace
        log.error("point failed", exc_info=True, extra={run_log.FILE_ONLY: True})
        return "failed", f"{type(err).__name__}: {' '.join(str(err).split())}"
    if interrupted_runs() != before:
        return "interrupted", f"exit {status}"
    if status == 0:
        return "ok", ""
    report = last_report()  # the ranks' one-line error, when they reported one
    return "failed", f"exit {status}" + (f": {report}" if report else "")


def run_sweep(command: str, args: Sequence[str], dispatch: Callable[[list[str]], int]) -> int:
    """Run (or submit) every point of the sweep `args` describe; see the module's docstring.
    `dispatch([command, *overrides])` runs one point in this process."""
    config_dirs, overrides = _split_config_dirs(args)
    points = expand(overrides)
    # Every point's config first: a mistake in one is known before hours of the others.
    configs: list[tuple[str, str] | ConfigError] = []
    for point in points:
        try:
            configs.append(_run_dir_of([*config_dirs, *point.overrides]))
        except ConfigError as err:
            configs.append(err)
    good = [c for c in configs if not isinstance(c, ConfigError)]
    if not good:
        raise configs[0]  # type: ignore[misc]
    base = good[0][0]
    name, total = f"chimed {command}", len(points)
    record = Path(base) / "sweep.json"
    status = 0
    with run_log.command_log(Path(base) / "sweep.log", export=False):
        log.info("%s: sweep of %d point(s) in %s", name, total, base)
        for point, config in zip(points, configs):
            where = f"{name}: point {point.index + 1}/{total}"
            if isinstance(config, ConfigError):
                point.status, point.detail = "failed", str(config)
                log.error("%s %s failed: %s (the sweep goes on)", where, point.label, config)
                _save(record, command, points)
                continue
            run_dir, kind = config
            point.run_dir = str(Path(run_dir) / point_folder(point))
            kept = [o for o in point.overrides if o.lstrip("+~").split("=")[0] != "run_dir"]
            full = [*config_dirs, *kept, f"run_dir={point.run_dir}"]
            log.info("%s: %s -> %s", where, point.label, point.run_dir)
            try:
                if kind == "slurm" and command == "train":
                    submitted, point.detail = _submit(full)
                    point.status = "submitted" if submitted else "failed"
                else:
                    point.status, point.detail = _run_local(command, full, dispatch)
            except KeyboardInterrupt:
                point.status, point.detail = "interrupted", "Ctrl-C"
            _save(record, command, points)
            if point.status == "interrupted":
                log.error("%s: interrupted; the sweep stops", where)
                status = 130
                break
            if point.status == "failed":
                log.error("%s failed: %s (the sweep goes on)", where, point.detail)
            else:
                log.info("%s %s", where, "submitted: " + point.detail if point.detail else "done")
        run_log.echo(summary(points))
    if status:
        return status
    return 1 if any(p.status == "failed" for p in points) else 0


def summary(points: list[Point]) -> str:
    """The end-of-sweep table: one line per point."""
    good = sum(p.status in ("ok", "submitted") for p in points)
    lines = [f"sweep: {good} of {len(points)} point(s) succeeded"]
    for p in points:
        detail = f" ({p.detail})" if p.detail else ""
        lines.append(f"  {p.index + 1:>3} {p.status:<11} {p.label}  {p.run_dir}{detail}")
    return "\n".join(lines)


def _save(path: Path, command: str, points: list[Point]) -> None:
    atomic_write_text(path, json.dumps({"command": command, "points": [asdict(p) for p in points]},
                                       ensure_ascii=False, indent=1))  # fmt: skip
