"""Start a run the way the Hydra `launcher` group says: in process, torchrun, or sbatch.

    python launch/submit.py launcher=slurm launcher.nodes=2 run_dir=DIR [overrides...] [--dry-run]

All overrides reach the trainer unchanged; the launcher ones also choose how it is started.
slurm: renders launch/slurm.sbatch into RUN_DIR/launch.sbatch and submits it with sbatch
(prints the job id); --dry-run prints the script (or the command) and changes nothing.
A GPU training job is planned first (`chimed plan`, on `--gpu`): one that does not fit in the
GPU's memory is refused, in one line with the verdict and the biggest item, unless --force.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from megatron_chimed.config import CONF_DIR, ConfigError
from megatron_chimed.launch import DEFAULT_MODULE, compose_launcher, render_sbatch
from megatron_chimed.launch.config import LauncherConfig
from megatron_chimed.plan.cli import DEFAULT_GPU
from megatron_chimed.plan.gpus import GPUS


def _absolute_run_dir(overrides: list[str], run_dir: str | None) -> tuple[list[str], str | None]:
    """Make run_dir absolute, so the job writes where the submitter looks whatever its cwd."""
    if not run_dir:
        return overrides, None
    absolute = str(Path(run_dir).resolve())
    kept = [o for o in overrides if o.lstrip("+").split("=", 1)[0] != "run_dir"]
    return [*kept, f"run_dir={absolute}"], absolute


def local_command(cfg: LauncherConfig, overrides: list[str], module: str) -> list[str]:
    if cfg.kind == "local":
        return [sys.executable, "-m", module, *overrides]
    return [str(REPO / "launch" / "torchrun.sh"), str(cfg.nproc_per_node), *overrides]


def submit_slurm(
    cfg: LauncherConfig,
    overrides: list[str],
    module: str,
    run_dir: str | None,
    dry_run: bool,
    wait: bool,
) -> int:
    if not run_dir:
        sys.exit("launcher=slurm needs run_dir=DIR (the job script and logs are written there)")
    log_dir = f"{run_dir}/logs"
    script = render_sbatch(cfg, overrides, module, log_dir=log_dir)
    if dry_run:
        print(script, end="")
        return 0
    Path(log_dir).mkdir(parents=True, exist_ok=True)  # Slurm does not create it
    path = Path(run_dir) / "launch.sbatch"
    path.write_text(script)
    cmd = ["sbatch", "--parsable", *(["--wait"] if wait else []), str(path)]
    # --parsable prints the id at submission, before --wait blocks.
    return subprocess.run(cmd, check=False).returncode


def plan_gate(overrides: list[str], gpu: str, force: bool) -> None:
    """Refuse (exit with one line) a job whose config does not fit on `gpu`, unless `force`:
    an out-of-memory at the first step costs the whole wait in the queue."""
    from megatron_chimed.plan.cli import check

    try:
        fits, line = check(overrides, gpu)
    except ValueError as err:  # the config error names its key
        sys.exit(f"submit.py: {err}")
    if not fits and not force:
        sys.exit(
            f"submit.py: {line}; `chimed plan <these overrides> --gpu {gpu}` says what to "
            "change, --force submits anyway"
        )
    print(f"submit.py: {line}{'' if fits else ' (--force: submitting anyway)'}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. launcher=slurm")
    parser.add_argument("--dry-run", action="store_true", help="print, do not run or submit")
    parser.add_argument("--wait", action="store_true", help="slurm: sbatch --wait")
    parser.add_argument("--module", default=DEFAULT_MODULE, help="the training module to run")
    parser.add_argument("--conf-dir", type=Path, default=CONF_DIR)
    parser.add_argument("--config-name", default="config", help="primary config in conf-dir")
    parser.add_argument(
        "--gpu", default=DEFAULT_GPU, choices=sorted(GPUS), help="slurm GPU jobs: plan on this GPU"
    )
    parser.add_argument("--force", action="store_true", help="submit even if the plan says no fit")
    parser.add_argument(
        "--config-dir", action="append", default=[], type=Path,
        help="your config folder, searched before conf/ (repeatable; CHIMED_CONFIG_PATH too)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    # Absolute: the job may start in another folder. Passed on to the trainer with the overrides.
    user = [t for d in args.config_dir for t in ("--config-dir", str(d.resolve()))]
    args.overrides = [*user, *args.overrides]

    # The trainer's whole config is checked before it is queued; another module's keys are its own.
    try:
        cfg, run_dir = compose_launcher(
            args.overrides, args.conf_dir, args.config_name, check_all=args.module == DEFAULT_MODULE
        )
    except ConfigError as err:
        sys.exit(f"submit.py: {err}")
    trainer = args.module == DEFAULT_MODULE and args.config_name == "config"
    if cfg.kind == "slurm" and cfg.gpus_per_node and trainer and args.conf_dir == CONF_DIR:
        plan_gate(list(args.overrides), args.gpu, args.force)
    overrides, run_dir = _absolute_run_dir(list(args.overrides), run_dir)
    if cfg.kind == "slurm":
        return submit_slurm(cfg, overrides, args.module, run_dir, args.dry_run, args.wait)
    cmd = local_command(cfg, overrides, args.module)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    env = {
        **os.environ,
        "CHIMED_MODULE": args.module,
        "MASTER_PORT": str(cfg.master_port),
        "TORCHRUN": os.environ.get("TORCHRUN", f"{sys.executable} -m torch.distributed.run"),
    }
    return subprocess.run(cmd, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
