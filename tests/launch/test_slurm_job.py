"""The rendered sbatch and the real trainer on a real two-node Slurm cluster (loopback,
megatron_chimed/testing/slurm_cluster.py).

launch/submit.py renders and submits a 2-node TP=2 CPU CPT run of the tiny model (one rank per
node, gloo). A second, identical job with periodic checkpoints is then preempted three times,
once by each way a stop reaches a job, each time after a periodic checkpoint: USR1 to the batch
shell (what `--signal=B:USR1@grace` does), then USR1 and TERM to every process of the job
(Slurm preemption, `scancel --signal`), which reach torchrun and the checkpoint writer's helper
processes too, but not the batch shell. Each time it checkpoints, requeues itself and resumes
from `latest`; it must end on the bitwise same metrics as the first job.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from megatron_chimed.testing.slurm_cluster import SlurmCluster, ensure_slurm_installed
from megatron_chimed.testing.workers import free_port

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
ITERS = 24
# Metrics that depend on the weights and data only (not on timing): equal bit for bit.
EXACT = ("lm_loss", "grad_norm", "lr", "consumed_samples")
SAVE_INTERVAL = 3
# (what the stop stands for, scancel's options), in the order the preempted job gets them.
STOPS = (
    ("USR1 to the batch shell", ("--signal=USR1", "--batch")),
    ("USR1 to every process", ("--signal=USR1",)),
    ("TERM to every process", ("--signal=TERM",)),
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = ensure_slurm_installed()
    if reason:
        pytest.skip(reason)
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    slurm.start()
    try:
        yield slurm
    finally:
        slurm.stop()


@pytest.fixture(scope="module")
def trainer_overrides(tiny_ziya: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """experiment=demo's CPT (the tiny model at TP=2 on the preprocessed bundled sample), with
    tests/training/train_checks.py's settings: ITERS logged iterations of 8 x 64 tokens."""
    from megatron_chimed.data.indexed import output_prefix, preprocess
    from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA

    data = tmp_path_factory.mktemp("data")
    preprocess(
        sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl")),
        data / "sample",
        tiny_ziya,
        progress=False,
    )
    return [
        "experiment=demo",
        "stage=cpt",
        "parallel=tp2_cpu",
        f"training.train_iters={ITERS}",
        "training.log_interval=1",
        "training.eval_interval=0",
        "training.tensorboard=false",
        "optim.lr=2e-3",
        "optim.warmup_iters=2",
        f"training.tokenizer={tiny_ziya}",
        f"data.blend=[1.0,{output_prefix(data / 'sample', 'text')}]",
    ]


def _submit(cluster: SlurmCluster, run_dir: Path, overrides: list[str], wait: bool) -> str:
    """launch/submit.py for a 2-node CPU job of the trainer; returns the job id."""
    setup = f"['source {REPO}/.venv/bin/activate','export OMP_NUM_THREADS=1']"
    cmd = [
        sys.executable,
        str(REPO / "launch" / "submit.py"),
        "launcher=slurm",
        "launcher.nodes=2",
        "launcher.gpus_per_node=0",
        "launcher.procs_per_node=1",
        f"launcher.master_port={free_port()}",
        f"launcher.workdir={REPO}",
        "launcher.time=00:10:00",
        "launcher.signal_grace_s=60",
        f"launcher.setup={setup}",
        f"run_dir={run_dir}",
        *overrides,
        *(["--wait"] if wait else []),
    ]
    done = subprocess.run(
        cmd, env=cluster.env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()[0]


def _train_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.fixture(scope="module")
def full_run(
    cluster: SlurmCluster, trainer_overrides: list[str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    run_dir = tmp_path_factory.mktemp("full")
    t0 = time.monotonic()
    job = _submit(cluster, run_dir, trainer_overrides, wait=True)
    print(f"2-node CPT job {job}: submit to finish {time.monotonic() - t0:.1f} s")
    return job, run_dir


def _latest(run_dir: Path) -> int:
    path = run_dir / "checkpoints" / "latest"  # replaced atomically
    return int(path.read_text().strip()[len("iter_") :]) if path.exists() else 0


def _preempt(cluster: SlurmCluster, job: str, run_dir: Path) -> list[dict]:
    """Stop `job` once per STOPS entry, each after a periodic checkpoint of the current start
    (so the checkpoint writer's helper processes exist); wait for each requeue."""
    stops: list[dict] = []
    for restarts, (how, flags) in enumerate(STOPS, start=1):
        previous = stops[-1]["iteration"] if stops else 0
        deadline = time.monotonic() + 240
        while not (_latest(run_dir) > previous and _latest(run_dir) % SAVE_INTERVAL == 0):
            assert time.monotonic() < deadline, f"no save after {previous}: {cluster.job(job)}"
            time.sleep(0.1)
        t_signal = time.monotonic()
        cluster.run("scancel", *flags, job)
        info = cluster.wait_job(job, ("PENDING",), timeout=120)
        assert info["Restarts"] == str(restarts), info
        # The stop iteration: the latest checkpoint while the job waits to restart.
        stops.append({"how": how, "iteration": _latest(run_dir)})
        print(
            f"{how}: requeued {time.monotonic() - t_signal:.1f} s after the signal, "
            f"stopped at iteration {stops[-1]['iteration']}"
        )
    return stops


@pytest.fixture(scope="module")
def preempted_run(
    cluster: SlurmCluster,
    trainer_overrides: list[str],
    full_run: tuple[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, Path, dict, list[dict]]:
    run_dir = tmp_path_factory.mktemp("preempted")
    t0 = time.monotonic()
    periodic = [*trainer_overrides, f"checkpoint.save_interval={SAVE_INTERVAL}"]
    job = _submit(cluster, run_dir, periodic, wait=False)
    stops = _preempt(cluster, job, run_dir)
    info = cluster.wait_job(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=240)
    print(f"preempted job {job}: submit to finish {time.monotonic() - t0:.1f} s")
    return job, run_dir, info, stops


def test_two_node_cpt_job(cluster: SlurmCluster, full_run: tuple[str, Path]) -> None:
    job, run_dir = full_run
    info = cluster.job(job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0"
    assert info["NodeList"] == "node[1-2]" and info["Restarts"] == "0"

    logs = run_dir / "logs"
    assert sorted(p.name for p in logs.iterdir()) == [
        f"chimed-{job}-node0.log",
        f"chimed-{job}-node1.log",
        f"chimed-{job}.log",
    ]
    batch = (logs / f"chimed-{job}.log").read_text()
    assert "master node1:" in batch and "training ended with status 0 (preempted=0)" in batch
    # Rank 0 (node 0) logs every iteration and the end; no rank failed on either node. (The
    # agent of node 1 may log torchrun's benign "Error waiting on exit barrier" with a
    # traceback, every line prefixed "E...": node 0's agent, the store host, left first.)
    node0 = (logs / f"chimed-{job}-node0.log").read_text()
    assert f"train iter {ITERS} |" in node0 and f"done at iteration {ITERS}" in node0
    # Node 1 holds no rank 0: its console (this log) may be empty, as only rank 0 prints.
    for node in (0, 1):
        lines = (logs / f"chimed-{job}-node{node}.log").read_text().splitlines()
        assert not any(line.startswith("Traceback") for line in lines)
        assert not any("ChildFailedError" in line for line in lines)

    metrics = _train_metrics(run_dir)
    assert [r["iteration"] for r in metrics] == list(range(1, ITERS + 1))
    loss = [r["lm_loss"] for r in metrics]
    first, last = sum(loss[:3]) / 3, sum(loss[-3:]) / 3
    print(f"lm_loss: first 3 iterations {first:.4f}, last 3 {last:.4f}")
    assert first > 7.0  # ln(2000) = 7.6 at random init
    assert last < first - 0.8
    assert metrics[-1]["consumed_samples"] == ITERS * 8

    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == f"iter_{ITERS:07d}"
    meta = sorted(p.name for p in (ckpt / f"iter_{ITERS:07d}").iterdir())
    assert "metadata.json" in meta and sum(n.endswith(".distcp") for n in meta) == 2  # 2 ranks
    assert (ckpt / "tokenizer" / "tokenizer.model").is_file()


def _no_failure(log: Path) -> None:
    lines = log.read_text().splitlines()
    assert not any(line.startswith("Traceback") for line in lines), log
    assert not any("ChildFailedError" in line or "BrokenPipe" in line for line in lines), log


def test_preemptions_requeue_and_resume_to_the_same_loss(
    preempted_run: tuple[str, Path, dict, list[dict]], full_run: tuple[str, Path]
) -> None:
    job, run_dir, info, stops = preempted_run
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0"
    assert info["Restarts"] == str(len(STOPS))
    at = [stop["iteration"] for stop in stops]
    assert SAVE_INTERVAL < at[0] < at[1] < at[2] < ITERS, stops

    batch = (run_dir / "logs" / f"chimed-{job}.log").read_text()
    assert batch.count(f"job {job} start") == len(STOPS) + 1
    # Only the first stop reached the batch shell; the trainer's marker told it of the others.
    assert batch.count("USR1: forwarding") == 1
    assert batch.count("requeueing") == len(STOPS)
    assert batch.rstrip().endswith("training ended with status 0 (preempted=0)")
    assert not list((run_dir / "logs").glob(".preempted-*"))
    node0 = (run_dir / "logs" / f"chimed-{job}-node0.log").read_text()
    for iteration in at:
        assert f"preempted at iteration {iteration} (" in node0
    assert f"done at iteration {ITERS} ({ITERS * 8} samples)" in node0
    for node in (0, 1):
        _no_failure(run_dir / "logs" / f"chimed-{job}-node{node}.log")
    # Resumed from `latest` each time: every iteration logged once.
    resumed = _train_metrics(run_dir)
    assert [r["iteration"] for r in resumed] == list(range(1, ITERS + 1))
    ckpts = sorted(int(p.name[len("iter_") :]) for p in (run_dir / "checkpoints").glob("iter_*"))
    assert ckpts == sorted({*range(SAVE_INTERVAL, ITERS + 1, SAVE_INTERVAL), *at, ITERS})

    reference = _train_metrics(full_run[1])
    exact = [{k: r[k] for k in EXACT} for r in resumed]
    assert exact == [{k: r[k] for k in EXACT} for r in reference]
    print(f"final lm_loss {resumed[-1]['lm_loss']!r} (uninterrupted {reference[-1]['lm_loss']!r})")
