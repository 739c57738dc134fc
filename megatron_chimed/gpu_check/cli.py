"""`chimed gpu-check [--tp 2] [--wheels DIR] [--report PATH] [--dry-run]`.

Run it on the first GPU node of a cluster, before the real job: about ten minutes on one GPU
(two with `--tp 2`). Every section prints PASS / FAIL / SKIP with its figure and the whole run
goes to a JSON report. Exit status: 0 when every check that ran passed, 1 when one failed,
3 when there is no CUDA device (a CPU machine; `--dry-run` runs the checks there instead).

Processes: with `--wheels` the command installs the local wheels into a target folder and runs
itself again with that folder on PYTHONPATH; with `--tp 2` it runs itself again under torchrun
(`megatron_chimed.launch.torchrun`), where every rank runs every check and rank 0 reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light imports only at start-up: the no-CUDA exit needs nothing else
    from megatron_chimed.gpu_check.results import CheckResult
    from megatron_chimed.platform import ParallelLayout

MODULE = "megatron_chimed.gpu_check.cli"
EXIT_NO_CUDA = 3
WHEELS_ENV = "CHIMED_GPU_CHECK_WHEELS"  # set for the re-run: what was installed, as JSON
SECTIONS = (
    "environment",
    "te_vs_local",
    "packed_sft",
    "sft_train",
    "reward",
    "slice",
    "generation",
    "dynamic_generation",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="chimed gpu-check",
        description="GPU acceptance check: the project's code paths on this node's GPU, "
        "a 13B-shaped speed/memory slice and generation, with a JSON report.",
    )
    ap.add_argument("--report", default="gpu_check.json", help="JSON report path")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="run every check on the CPU at tiny sizes (TE checks SKIP); no GPU needed",
    )
    ap.add_argument(
        "--tp", type=int, default=1, choices=(1, 2), help="2: the TP=2 / sequence-parallel run"
    )
    ap.add_argument(
        "--wheels",
        type=Path,
        help="folder of wheels to add first (megatron-core, transformer-engine, flash-attn and "
        "any of their dependencies this node lacks); installed with --no-deps, torch is kept",
    )
    ap.add_argument("--wheels-target", type=Path, help="install folder (default: WHEELS/site)")
    ap.add_argument("--work-dir", type=Path, help="scratch folder (default: a temp folder)")
    ap.add_argument(
        "--slice", default="", help="slice shape over the 13B one, e.g. layers=2,seq=2048"
    )
    ap.add_argument(
        "--only", default="", help=f"comma-separated sections to run, of {', '.join(SECTIONS)}"
    )
    args = ap.parse_args(argv)
    unknown = set(filter(None, args.only.split(","))) - set(SECTIONS)
    if unknown:
        ap.error(f"--only: unknown sections {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU path, GPU or not
    # TE reads these when it is imported: its backend choice is then logged, and captured.
    os.environ.setdefault("NVTE_DEBUG", "1")
    os.environ.setdefault("NVTE_DEBUG_LEVEL", "1")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            f"chimed gpu-check: no CUDA device here (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}); run it on a GPU node, or add --dry-run for the CPU path",
            file=sys.stderr,
        )
        return EXIT_NO_CUDA
    if args.wheels and WHEELS_ENV not in os.environ:
        return install_and_rerun(args, argv)
    under_torchrun = "LOCAL_RANK" in os.environ
    if args.tp > 1 and not under_torchrun:
        from megatron_chimed.launch.torchrun import torchrun

        work = args.work_dir or Path(tempfile.mkdtemp(prefix="chimed_gpu_check_"))
        try:
            return torchrun(MODULE, args.tp, [*argv, "--work-dir", str(work)])
        finally:
            if args.work_dir is None:
                shutil.rmtree(work, ignore_errors=True)
    if under_torchrun and int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.work_dir is None:
        print("chimed gpu-check: under torchrun, give every rank the same --work-dir")
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="chimed_gpu_check_"))
    try:
        return run_checks(args, argv, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def install_wheels(wheels: Path, target: Path) -> dict:
    """`pip install --no-index --find-links WHEELS --no-deps --target TARGET WHEELS/*.whl`:
    local files only, and no dependency resolution, which with --target would try to install
    torch again."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise FileNotFoundError(f"--wheels {wheels}: no .whl files there")
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
           "--no-deps", "--upgrade", "--target", str(target), *map(str, files)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"pip install from {wheels} failed: {' '.join(tail)}")
    return {
        "wheels": [f.name for f in files],
        "target": str(target),
        "install_seconds": round(time.perf_counter() - start, 1),
    }


def install_and_rerun(args: argparse.Namespace, argv: list[str]) -> int:
    """Install, then run this command again with the target first on PYTHONPATH: a fresh
    interpreter imports the new packages, also in every torchrun rank it starts."""
    target = args.wheels_target or args.wheels / "site"
    try:
        info = install_wheels(args.wheels, target)
    except (FileNotFoundError, RuntimeError) as err:
        print(f"chimed gpu-check: {err}", file=sys.stderr)
        return 1
    print(f"installed {len(info['wheels'])} wheels into {target} in {info['install_seconds']} s")
    repo = Path(__file__).resolve().parents[2]  # so the re-run finds this package as well
    path = [str(target.resolve()), str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), WHEELS_ENV: json.dumps(info)}
    return subprocess.call([sys.executable, "-m", MODULE, *argv], env=env)


def te_usable() -> tuple[bool, str]:
    import torch

    from megatron_chimed.model.builder import have_transformer_engine

    if not torch.cuda.is_available():
        return False, "no CUDA: Transformer Engine checks skipped"
    if not have_transformer_engine():
        return False, "Transformer Engine is not installed: TE checks skipped"
    return True, ""


def agree(result: CheckResult, layout: ParallelLayout) -> CheckResult:
    """The worst status over all ranks (one failing rank fails the check); the count lives on
    the compute device, as every tensor handed to a collective does."""
    import torch
    import torch.distributed as dist

    from megatron_chimed.gpu_check.results import STATUS_CODES

    if layout.world_size == 1:
        return result
    code = torch.tensor([STATUS_CODES[result.status]], device=layout.device)
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    worst = {v: k for k, v in STATUS_CODES.items()}[int(code.item())]
    if worst != result.status:
        result.message += f" (another rank: {worst})"
        result.status = worst
    return result


def run_checks(args: argparse.Namespace, argv: list[str], work: Path) -> int:
    from megatron_chimed.gpu_check.checks import check_environment
    from megatron_chimed.gpu_check.results import exit_code, run_check, skipped, write_report

    started = time.perf_counter()
    rank = int(os.environ.get("RANK", "0"))
    wheels = json.loads(os.environ[WHEELS_ENV]) if WHEELS_ENV in os.environ else None
    only = set(filter(None, args.only.split(","))) or set(SECTIONS)

    def show(result: CheckResult) -> None:
        if rank == 0:
            print(result.line(), flush=True)

    extra = {"installed_wheels": wheels, "pythonpath": os.environ.get("PYTHONPATH")}
    env = run_check("environment", lambda: check_environment(extra))
    show(env)
    results = [env]
    rest: list[CheckResult] | None = None  # None: run the sections
    try:
        import megatron.core  # noqa: F401
    except Exception as err:  # a bare node without wheels: everything else needs megatron-core
        missing = f"megatron-core does not import: {type(err).__name__}: {err}"
        rest = [skipped(name, missing) for name in SECTIONS[1:]]
    if rest is None and not only - {"environment"}:
        rest = [skipped(name, "not selected (--only)") for name in SECTIONS[1:]]
    if rest is None:
        results += run_sections(args, work, only, show)  # each shown as it finishes
    else:
        for result in rest:
            show(result)
        results += rest
    meta = {
        "command": "chimed gpu-check " + " ".join(argv),
        "dry_run": args.dry_run,
        "tp": args.tp,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if rank == 0:
        write_report(args.report, results, meta)
        print(f"{exit_code(results) and 'FAILED' or 'OK'}: report in {args.report}, "
              f"{meta['seconds']:.0f} s")  # fmt: skip
    return exit_code(results)


def run_sections(
    args: argparse.Namespace, work: Path, only: set[str], show: Callable[[CheckResult], None]
) -> list[CheckResult]:
    """Sections 1-6 inside the megatron world (TP = --tp)."""
    from megatron_chimed.checkpoint.layout import resolve
    from megatron_chimed.generation.loading import model_config_from_metadata
    from megatron_chimed.gpu_check import checks, dynamic_check, slice_bench, train_check
    from megatron_chimed.gpu_check.context import (
        DRY_SIZES,
        GPU_SIZES,
        CheckContext,
        SliceShape,
        prepare_assets,
    )
    from megatron_chimed.gpu_check.results import run_check, skipped
    from megatron_chimed.platform import destroy, initialize

    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    if args.slice:
        sizes = dataclasses.replace(sizes, slice=SliceShape.parse(args.slice))
    # Each rank converts its own copy (seeded, so identical) before the world exists: the
    # converter runs in a world of one process.
    converted = prepare_assets(work / f"assets_rank{os.environ.get('RANK', '0')}")
    # A check that fails on one rank leaves the other in a collective: give up after minutes,
    # not after the default half hour, so the whole run stays near its ten-minute budget.
    layout = initialize(tensor_parallel=args.tp, seed=1234, timeout_minutes=5)
    te, reason = te_usable()
    ctx = CheckContext(
        dry_run=args.dry_run,
        layout=layout,
        work=work,
        converted=converted,
        model=model_config_from_metadata(resolve(converted)),
        sizes=sizes,
        te=te,
        te_reason=reason,
    )
    sections = {
        "te_vs_local": checks.check_te_vs_local,
        "packed_sft": checks.check_packed_sft,
        "sft_train": train_check.check_sft_training,
        "reward": checks.check_reward,
        "slice": slice_bench.check_slice,
        "generation": checks.check_generation,
        "dynamic_generation": dynamic_check.check_dynamic_generation,
    }
    results = []
    try:
        for name, fn in sections.items():
            if name in only:
                result = agree(run_check(name, lambda fn=fn: fn(ctx)), layout)
            else:
                result = skipped(name, "not selected (--only)")
            show(result)
            results.append(result)
    finally:
        destroy()
    return results


if __name__ == "__main__":
    sys.exit(main())
