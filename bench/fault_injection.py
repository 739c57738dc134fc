"""Fault injection: kill or signal a real training job at random moments, restart it until it
finishes, and compare every iteration with an uninterrupted run.

The job is `chimed train` (CPT of the tiny model at TP=2 over gloo, checkpointing every few
steps), started in a session of its own as a user or a Slurm step would start it. Faults, one
per run, at a random iteration (seeded):
- `kill9`: SIGKILL to the launcher's whole process group (a node lost, `scancel --signal=KILL`);
- `kill9_save`: the same, while a checkpoint folder is being written (before `latest` moves);
- `term_all` / `usr1_all`: TERM or USR1 to every process of the job (Slurm preemption,
  `scancel --signal=...`): the ranks must checkpoint and exit 0.
After a fault the same command line is started again, as a requeued job would be, until it
exits 0 with every iteration logged. A run is exact when the last logged value of every
iteration (loss, grad norm, lr, consumed samples) equals the uninterrupted run's bit for bit.

    python bench/fault_injection.py [--runs 4] [--iters 24] [--seed 0]

Ends with `RESULT exact_resumes=<exact>/<runs> goal=<runs>/<runs>`; lost runs (a job that
never finished, or a restart that failed) are counted apart.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
EXACT = ("lm_loss", "grad_norm", "lr", "consumed_samples")
FAULTS = ("kill9", "kill9_save", "term_all", "usr1_all")
START_TIMEOUT_S = 300


def overrides(tmp: Path, run_dir: Path, iters: int) -> list[str]:
    from megatron_chimed.data.indexed import output_prefix

    return [
        "experiment=demo", "stage=cpt", "parallel=tp2_cpu", f"run_dir={run_dir}",
        f"training.train_iters={iters}", "training.log_interval=1", "training.eval_interval=0",
        "training.tensorboard=false", "checkpoint.save_interval=4", "optim.lr=2e-3",
        "optim.warmup_iters=2", f"training.tokenizer={tmp / 'hf'}",
        f"data.blend=[1.0,{output_prefix(tmp / 'data' / 'sample', 'text')}]",
    ]  # fmt: skip


def prepare(tmp: Path) -> None:
    from megatron_chimed.data.indexed import preprocess
    from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA, make_tiny_ziya

    make_tiny_ziya(tmp / "hf")
    inputs = sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl"))
    preprocess(inputs, tmp / "data" / "sample", tmp / "hf", progress=False)


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "megatron_chimed.cli", "train", *args],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip


def logged(run_dir: Path) -> dict[int, dict]:
    """The last logged train record of each iteration (a line cut by SIGKILL is skipped)."""
    from megatron_chimed.plot import read_metrics

    path = run_dir / "metrics.jsonl"
    train = read_metrics(path).get("train", {}) if path.exists() else {}
    return {i: {k: r[k] for k in EXACT} for i, r in train.items()}


def job_processes(job: subprocess.Popen) -> list[psutil.Process]:
    """The launcher and every descendant (the ranks run in sessions of their own)."""
    try:
        parent = psutil.Process(job.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def saving(run_dir: Path) -> bool:
    """A checkpoint folder newer than the one `latest` names is being written."""
    ckpt = run_dir / "checkpoints"
    latest = (ckpt / "latest").read_text().strip() if (ckpt / "latest").exists() else ""
    return any(p.name > latest for p in ckpt.glob("iter_*"))


def inject(job: subprocess.Popen, run_dir: Path, fault: str, at: int) -> bool:
    """Wait for iteration `at` (or, for kill9_save, the first save after it), then inject.
    False if the job ended first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while job.poll() is None and time.monotonic() < deadline:
        reached = max(logged(run_dir), default=0) >= at
        if reached and (fault != "kill9_save" or saving(run_dir)):
            break
        time.sleep(0.02)
    if job.poll() is not None:
        return False
    processes = job_processes(job)
    if fault.startswith("kill9"):
        os.killpg(job.pid, signal.SIGKILL)
    else:
        sig = signal.SIGTERM if fault == "term_all" else signal.SIGUSR1
        for process in processes:
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
    return True


def survivors(processes: list[psutil.Process], timeout: float = 20) -> int:
    gone, alive = psutil.wait_procs(processes, timeout=timeout)
    return len(alive)


def one_run(tmp: Path, name: str, fault: str, at: int, iters: int) -> dict:
    run_dir = tmp / name
    args, log = overrides(tmp, run_dir, iters), tmp / f"{name}.log"
    job = start(args, log)
    processes = job_processes(job)
    injected = inject(job, run_dir, fault, at)
    processes += [p for p in job_processes(job) if p not in processes]
    job.wait(timeout=START_TIMEOUT_S)
    orphans = survivors(processes)
    restarts = 0
    while True:
        done = max(logged(run_dir), default=0) >= iters and job.returncode == 0
        if done or restarts == 3:
            break
        restarts += 1
        job = start(args, log)
        job.wait(timeout=START_TIMEOUT_S)
    return {
        "name": name, "fault": fault, "at": at, "injected": injected, "restarts": restarts,
        "exit": job.returncode, "orphans": orphans, "records": logged(run_dir),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--iters", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="fault_injection_") as name:
        tmp = Path(name)
        prepare(tmp)
        t0 = time.monotonic()
        reference = one_run(tmp, "reference", "none", args.iters + 1, args.iters)["records"]
        print(f"uninterrupted run: {len(reference)} iterations in {time.monotonic() - t0:.0f} s")
        exact = lost = 0
        for k in range(args.runs):
            fault = FAULTS[k % len(FAULTS)]
            at = rng.randint(2, args.iters - 2)
            r = one_run(tmp, f"run{k}", fault, at, args.iters)
            ok = r["exit"] == 0 and r["records"] == reference
            exact += ok
            lost += r["exit"] != 0 or len(r["records"]) < args.iters
            diverged = [i for i in reference if r["records"].get(i) != reference[i]]
            print(
                f"{r['name']}: {fault} at iteration {at} (injected: {r['injected']}), "
                f"{r['restarts']} restart(s), exit {r['exit']}, {r['orphans']} process(es) "
                f"left after the fault, {'exact' if ok else f'differs at {diverged[:5]}'}",
                flush=True,
            )
    print(f"runs {args.runs}, exact resumes {exact}, lost {lost}")
    print(f"RESULT exact_resumes={exact}/{args.runs} goal={args.runs}/{args.runs}")


if __name__ == "__main__":
    main()
