"""The launcher config group, the sbatch renderer and submit.py, without Slurm.

The batch shell's trap/forward/requeue logic is also run here against stand-in `srun` and
`scontrol` commands; tests/launch/test_slurm_job.py runs the same script on a real Slurm.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf.errors import ConfigKeyError, ValidationError

from megatron_chimed.launch import LauncherConfig, compose_launcher, render_sbatch
from megatron_chimed.launch.config import time_limit_seconds, to_launcher_config

REPO = Path(__file__).resolve().parents[2]


def _gpu_job() -> str:
    overrides = [
        "launcher=slurm",
        "launcher.nodes=2",
        "launcher.gpus_per_node=8",
        "launcher.partition=gpu",
        "launcher.account=med",
        "launcher.time=2-00:00:00",
        "launcher.signal_grace_s=600",
        "run_dir=/scratch/run",
    ]
    cfg, run_dir = compose_launcher(overrides)
    assert run_dir == "/scratch/run"
    # Trainer-only overrides are passed through untouched.
    return render_sbatch(cfg, [*overrides, "experiment=demo"], log_dir="/scratch/run/logs")


def test_two_nodes_eight_gpus() -> None:
    text = _gpu_job()
    lines = text.splitlines()
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=chimed",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --mem=0",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=med",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --signal=B:USR1@600",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --output=/scratch/run/logs/%x-%j.log",
    ]
    # Master address: first host of the allocation; node rank: SLURM_NODEID; static rendezvous.
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)' in lines
    assert "MASTER_PORT=29500" in lines
    assert '--node_rank="$SLURM_NODEID" --nproc_per_node=8 \\' in text
    assert '--master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT"' in text
    assert '--nnodes="$SLURM_JOB_NUM_NODES"' in text
    assert "rdzv" not in text and "c10d" not in text.replace("no c10d", "")
    # One torchrun per node, each with its own log, the trainer module and the overrides.
    srun = next(line for line in lines if line.startswith("srun "))
    assert "--ntasks-per-node=1" in srun and "--output=/scratch/run/logs/%x-%j-node%n.log" in srun
    assert '-m megatron_chimed.train "$@"\'' in text
    assert (
        "torchrun-node launcher=slurm launcher.nodes=2 launcher.gpus_per_node=8 " in text
    ) and "run_dir=/scratch/run experiment=demo &" in text
    # Preemption: USR1 trapped, forwarded to srun's step, torchrun ignores it, then requeue.
    assert "trap forward_usr1 USR1" in lines
    assert 'kill -USR1 "$srun_pid"' in text
    # torchrun leaves USR1, TERM and INT to the ranks, which then save and exit 0 whichever
    # reached them; the trainer's marker tells the batch shell, which the signal may miss.
    assert 'bash -c \'trap "" USR1 TERM INT; export PET_SIGNALS_TO_HANDLE=SIGHUP,SIGQUIT' in text
    assert "    exec torchrun --nnodes" in text
    assert "export CHIMED_PREEMPTED_MARKER=/scratch/run/logs/.preempted-$SLURM_JOB_ID" in lines
    assert '  scontrol requeue "$SLURM_JOB_ID"' in lines and "requeue=1" in lines
    # GPU environment exported before the user's setup lines.
    assert "export CUDA_DEVICE_MAX_CONNECTIONS=1" in lines
    assert "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in lines
    assert "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in lines
    assert subprocess.run(["bash", "-n"], input=text, text=True, check=False).returncode == 0


def test_cpu_job_and_options() -> None:
    cfg = to_launcher_config(
        {
            "kind": "slurm",
            "nodes": 3,
            "gpus_per_node": 0,
            "procs_per_node": 2,
            "requeue": False,
            "cpus_per_task": 4,
            "workdir": "/work/main",
            "torchrun": "python -m torch.distributed.run",
            "setup": ["source .venv/bin/activate"],
            "sbatch_extra": ["--qos=high", "#SBATCH --mem=0"],
        }
    )
    probe = "megatron_chimed.testing.launch_probe"
    text = render_sbatch(cfg, ["run_dir=/tmp/my run", "a='x'"], probe)
    lines = text.splitlines()
    assert "#SBATCH --nodes=3" in lines and "#SBATCH --cpus-per-task=4" in lines
    assert "#SBATCH --no-requeue" in lines and "requeue=0" in lines
    assert "#SBATCH --chdir=/work/main" in lines
    assert lines.index("#SBATCH --qos=high") + 1 == lines.index("#SBATCH --mem=0")
    # The user's own --mem replaces launcher.mem rather than adding a second one.
    assert sum(line.startswith("#SBATCH --mem") for line in lines) == 1
    assert not any("gpus-per-node" in line or "NCCL" in line for line in lines)
    assert "--nproc_per_node=2 \\" in text and "-m megatron_chimed.testing.launch_probe" in text
    assert "exec python -m torch.distributed.run --nnodes" in text
    assert "source .venv/bin/activate" in lines
    assert "torchrun-node 'run_dir=/tmp/my run' 'a='\"'\"'x'\"'\"'' &" in text


def test_mem_option() -> None:
    lines = render_sbatch(to_launcher_config({"kind": "slurm", "mem": "480G"}), []).splitlines()
    assert "#SBATCH --mem=480G" in lines
    lines = render_sbatch(to_launcher_config({"kind": "slurm", "mem": None}), []).splitlines()
    assert not any(line.startswith("#SBATCH --mem") for line in lines)


def test_torchrun_script_exports_the_same_gpu_env() -> None:
    """launch/torchrun.sh spells the GPU defaults out in bash: they must stay the Python ones."""
    import re

    from megatron_chimed.launch.config import default_gpu_env

    script = (REPO / "launch" / "torchrun.sh").read_text()
    exported = dict(re.findall(r'^export (\w+)="\$\{\1:-([^}]*)\}"$', script, re.M))
    assert exported == default_gpu_env()


@pytest.mark.parametrize(
    ("limit", "seconds"),
    [
        ("90", 5400),
        ("30:00", 1800),
        ("4:00:00", 14400),
        ("1-12", 129600),
        ("2-00:00:00", 172800),
        ("1-2:3", 93780),
        ("UNLIMITED", None),
    ],
)
def test_time_limit_seconds(limit: str, seconds: int | None) -> None:
    assert time_limit_seconds(limit) == seconds


@pytest.mark.parametrize(
    ("node", "error", "match"),
    [
        ({"kind": "pbs"}, ValueError, "launcher.kind"),
        ({"nodez": 2}, ConfigKeyError, "nodez"),
        ({"nodes": "two"}, ValidationError, "nodes"),
        ({"kind": "torchrun", "nodes": 2}, ValueError, "needs launcher=slurm"),
        ({"kind": "slurm", "time": "10:00", "signal_grace_s": 600}, ValueError, "signal_grace_s"),
        ({"kind": "slurm", "time": "ten"}, ValueError, "not a Slurm time"),
        ({"procs_per_node": 0}, ValueError, "procs_per_node"),
    ],
)
def test_invalid_launcher_config(node: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        to_launcher_config(node)


def test_render_rejects_bad_module_and_log_dir() -> None:
    cfg = LauncherConfig(kind="slurm")
    with pytest.raises(ValueError, match="module"):
        render_sbatch(cfg, [], "train; rm -rf /")
    with pytest.raises(ValueError, match="whitespace"):
        render_sbatch(cfg, [], log_dir="/my logs")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"partition": "gpu\nrm -rf ~"}, "launcher.partition"),
        ({"account": "med\r"}, "launcher.account"),
        ({"mem": "0\n"}, "launcher.mem"),
        ({"workdir": "/scratch\ncurl x | sh"}, "launcher.workdir"),
        ({"torchrun": "torchrun\n--x"}, "launcher.torchrun"),
        ({"setup": ["module load cuda", "echo a\necho b"]}, "launcher.setup[1]"),
        ({"sbatch_extra": ["--qos=high\nrm -rf ~"]}, "launcher.sbatch_extra[0]"),
        ({"gpu_env": {"NCCL_DEBUG": "WARN\x00"}}, "launcher.gpu_env.NCCL_DEBUG"),
        ({"job_name": "chimed\x1b"}, "launcher.job_name"),
    ],
)
def test_render_rejects_control_characters_naming_the_key(change: dict, key: str) -> None:
    cfg = LauncherConfig(kind="slurm", gpus_per_node=8)
    for name, value in change.items():  # after construction: render_sbatch checks on its own
        setattr(cfg, name, value)
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}=.*control character U\+00"):
        render_sbatch(cfg, ["experiment=demo"])


def test_render_rejects_a_multi_line_override_and_a_bad_env_name() -> None:
    cfg = LauncherConfig(kind="slurm", gpus_per_node=8)
    with pytest.raises(ValueError, match=r"^overrides\[1\]=.*control character U\+000A"):
        render_sbatch(cfg, ["experiment=demo", "run_dir=/x\nrm -rf ~"])
    cfg.gpu_env = {"A;rm -rf ~;B": "1"}
    with pytest.raises(ValueError, match="launcher.gpu_env: 'A;rm -rf ~;B' is not an environment"):
        render_sbatch(cfg, [])


def test_compose_with_a_primary_config(tmp_path: Path) -> None:
    # Once conf/config.yaml exists the whole config is composed; emulate it on a copy.
    shutil.copytree(REPO / "conf" / "launcher", tmp_path / "launcher")
    (tmp_path / "config.yaml").write_text(
        "defaults:\n  - launcher: local\n  - _self_\nrun_dir: runs/default\n"
    )
    cfg, run_dir = compose_launcher(["launcher=slurm", "launcher.nodes=4", "+probe.x=1"], tmp_path)
    assert (cfg.kind, cfg.nodes, cfg.gpus_per_node, run_dir) == ("slurm", 4, 8, "runs/default")
    cfg, run_dir = compose_launcher(["run_dir=/r"], tmp_path)
    assert (cfg.kind, cfg.nproc_per_node, run_dir) == ("local", 1, "/r")


def _submit(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "launch" / "submit.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO / "conf",
        check=True,
    )
    return done.stdout


def test_submit_dry_run() -> None:
    # run_dir becomes absolute (relative to the submitter's cwd, here conf/).
    out = _submit("launcher=slurm", "launcher.gpus_per_node=0", "run_dir=rel", "--dry-run")
    assert f"#SBATCH --output={REPO}/conf/rel/logs/%x-%j.log" in out.splitlines()
    assert f"launcher.gpus_per_node=0 run_dir={REPO}/conf/rel &" in out
    assert not (REPO / "conf" / "rel").exists()  # a dry run writes nothing
    out = _submit("launcher=torchrun", "run_dir=/r", "+x=1", "--dry-run", "--module", "m.n")
    assert out.split() == [
        str(REPO / "launch" / "torchrun.sh"),
        "2",
        "launcher=torchrun",
        "+x=1",
        "run_dir=/r",
    ]
    out = _submit("run_dir=/r", "--dry-run")
    assert out.split() == [sys.executable, "-m", "megatron_chimed.train", "run_dir=/r"]


def test_submit_refuses_a_bad_trainer_config_before_queueing() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            "launcher=slurm",
            "run_dir=/r",
            "+optim.l_r=1",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines()[-1].startswith("submit.py: config key 'optim.l_r'")


FAKE_SRUN = """#!/bin/bash
# Stand-in for srun: records its arguments and, like the ranks, exits 0 at USR1.
echo "$@" > "$FAKE_DIR/srun.args"
trap 'echo usr1 > "$FAKE_DIR/srun.usr1"; exit 0' USR1
echo started > "$FAKE_DIR/srun.started"
for _ in $(seq 100); do sleep 0.1; done
exit 3
"""
FAKE_SCONTROL = """#!/bin/bash
case "$1 $2" in
  "show hostnames") printf 'nodeB\\nnodeA\\n' ;;
  "requeue "*) echo "$2" > "$FAKE_DIR/requeued" ;;
  *) exit 1 ;;
esac
"""


def _wait_for(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_batch_shell_forwards_usr1_and_requeues(tmp_path: Path) -> None:
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (tmp_path / name).write_text(body)
        (tmp_path / name).chmod(0o755)
    cfg = LauncherConfig(kind="slurm", nodes=2, master_port=1234)
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(cfg, ["run_dir=/r"], log_dir=str(tmp_path)))
    env = {
        **os.environ,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "FAKE_DIR": str(tmp_path),
        "SLURM_JOB_NODELIST": "node[B,A]",
        "SLURM_JOB_ID": "42",
    }
    job = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "srun.started")
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@grace does
    out, _ = job.communicate(timeout=20)
    assert job.returncode == 0
    assert (tmp_path / "srun.usr1").read_text() == "usr1\n"
    assert (tmp_path / "requeued").read_text() == "42\n"
    assert "master nodeB:1234" in out and "requeueing" in out
    assert "--nproc_per_node=1" in (tmp_path / "srun.args").read_text()


def test_batch_shell_without_signal_exits_with_step_status(tmp_path: Path) -> None:
    (tmp_path / "srun").write_text("#!/bin/bash\nexit 7\n")
    (tmp_path / "scontrol").write_text(FAKE_SCONTROL)
    for name in ("srun", "scontrol"):
        (tmp_path / name).chmod(0o755)
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(LauncherConfig(kind="slurm"), [], log_dir=str(tmp_path)))
    env = {
        **os.environ,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "FAKE_DIR": str(tmp_path),
        "SLURM_JOB_NODELIST": "nodeA",
        "SLURM_JOB_ID": "43",
    }
    done = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 7 and "status 7 (preempted=0)" in done.stdout
    assert not (tmp_path / "requeued").exists()


def test_batch_shell_requeues_on_the_trainers_marker(tmp_path: Path) -> None:
    # `scancel --signal=TERM JOB` (no --batch) reaches the ranks but not the batch shell: rank 0's
    # marker, left after its checkpoint, is how the shell learns it must requeue.
    (tmp_path / "scontrol").write_text(FAKE_SCONTROL)
    marker = tmp_path / ".preempted-44"
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(LauncherConfig(kind="slurm"), [], log_dir=str(tmp_path)))
    env = {
        **os.environ,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "FAKE_DIR": str(tmp_path),
        "SLURM_JOB_NODELIST": "nodeA",
        "SLURM_JOB_ID": "44",
    }
    for leaves_marker in (False, True):
        ranks = 'echo 1 > "$CHIMED_PREEMPTED_MARKER"\n' if leaves_marker else ""
        (tmp_path / "srun").write_text(f"#!/bin/bash\n{ranks}exit 0\n")
        for name in ("srun", "scontrol"):
            (tmp_path / name).chmod(0o755)
        marker.write_text("left by an earlier start\n")  # removed when the job starts
        done = subprocess.run(
            ["bash", str(script)], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "requeued").exists() == leaves_marker, done.stdout
        assert ("requeueing" in done.stdout) == leaves_marker
        assert not marker.exists()
        (tmp_path / "requeued").unlink(missing_ok=True)


def test_submit_takes_a_users_config_folder(tmp_path: Path) -> None:
    """`--config-dir DIR`: the user's model is selectable, checked before queueing, and the
    job gets the folder (absolute) with the overrides."""
    (tmp_path / "model").mkdir()
    tiny = (REPO / "conf" / "model" / "tiny.yaml").read_text()
    (tmp_path / "model" / "mine.yaml").write_text(tiny.replace("name: tiny", "name: mine"))
    out = _submit(
        "--config-dir", str(tmp_path), "launcher=slurm", "launcher.gpus_per_node=0",
        "model=mine", "run_dir=/r", "--dry-run",
    )  # fmt: skip
    assert f"--config-dir {tmp_path} launcher=slurm launcher.gpus_per_node=0 model=mine" in out
