"""The rendered sbatch and the real trainer on a real two-node Slurm cluster (loopback,
tests/slurm_cluster.py).

launch/submit.py renders and submits a 2-node TP=2 CPU CPT run of the tiny model (one rank per
node, gloo). A second, identical job is preempted with USR1 mid-run: it checkpoints, requeues
itself, resumes from `latest` and must end on the bitwise same metrics as the first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm_cluster import SlurmCluster, ensure_slurm_installed, free_port

REPO = Path(__file__).resolve().parents[1]
ITERS = 40
# Metrics that depend on the weights and data only (not on timing): equal bit for bit.
EXACT = ("lm_loss", "grad_norm", "lr", "consumed_samples")


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
    test_train.py's settings: 40 logged iterations of 8 x 64 tokens."""
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
    for node in (0, 1):
        lines = (logs / f"chimed-{job}-node{node}.log").read_text().splitlines()
        assert lines and not any(line.startswith("Traceback") for line in lines)
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


def test_usr1_requeues_and_resumes_to_the_same_loss(
    cluster: SlurmCluster,
    trainer_overrides: list[str],
    full_run: tuple[str, Path],
    tmp_path: Path,
) -> None:
    t0 = time.monotonic()
    job = _submit(cluster, tmp_path, trainer_overrides, wait=False)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 120
    # The loop's USR1 handler is in place once an iteration is logged.
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline, f"no training progress: {cluster.job(job)}"
        time.sleep(0.1)
    t_signal = time.monotonic()
    # What `#SBATCH --signal=B:USR1@grace` does near the time limit: USR1 to the batch shell.
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    info = cluster.wait_job(job, ("PENDING",), timeout=60)
    t_requeued = time.monotonic()
    assert info["Restarts"] == "1"
    # The stop iteration: the latest checkpoint before the restart overwrites nothing but it.
    stopped_at = int((tmp_path / "checkpoints" / "latest").read_text().strip()[len("iter_") :])
    info = cluster.wait_job(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=180)
    t_done = time.monotonic()
    print(
        f"preempted job {job}: USR1 at {t_signal - t0:.1f} s, requeued after "
        f"{t_requeued - t_signal:.1f} s at iteration {stopped_at}, finished "
        f"{t_done - t_requeued:.1f} s later; total {t_done - t0:.1f} s"
    )
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0"
    assert info["Restarts"] == "1"
    assert 3 <= stopped_at < ITERS

    batch = (tmp_path / "logs" / f"chimed-{job}.log").read_text()
    assert batch.count(f"job {job} start") == 2
    assert "USR1: forwarding" in batch and "requeueing" in batch
    assert "training ended with status 0 (preempted=0)" in batch
    node0 = (tmp_path / "logs" / f"chimed-{job}-node0.log").read_text()
    assert f"preempted at iteration {stopped_at} (" in node0
    assert f"done at iteration {ITERS} ({ITERS * 8} samples)" in node0
    # Resumed from `latest`: every iteration logged once (a fresh start would repeat 1..k).
    resumed = _train_metrics(tmp_path)
    assert [r["iteration"] for r in resumed] == list(range(1, ITERS + 1))
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("iter_*"))
    assert ckpts == [f"iter_{stopped_at:07d}", f"iter_{ITERS:07d}"]

    reference = _train_metrics(full_run[1])
    exact = [{k: r[k] for k in EXACT} for r in resumed]
    assert exact == [{k: r[k] for k in EXACT} for r in reference]
    print(f"final lm_loss {resumed[-1]['lm_loss']!r} (uninterrupted {reference[-1]['lm_loss']!r})")
