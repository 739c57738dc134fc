"""A real two-node Slurm cluster on loopback, for tests.

munged, slurmctld and two slurmd "nodes" (node1 on 127.0.0.2:6818, node2 on 127.0.0.3:6819) run
on this one machine with every config, state, spool, pid and log file under one temp dir (munged's
under its own /tmp dir, see `_start_munge`). Daemons are stopped by the PIDs in their pid files,
never by name, so a cluster of someone else is left alone.

What the settings rest on (measured with Debian bookworm's Slurm 22.05.8, as root, in a container
without systemd):

- `apt-get install --no-install-recommends slurmctld slurmd slurm-client munge` takes 7-14 s and
  starts no service (there `/usr/sbin/policy-rc.d` exits 101); munge's postinst creates
  /etc/munge/munge.key and the `munge` and `slurm` users. From nothing to a finished two-node
  `sbatch --wait` job took 17 s.
- munged runs as the munge user (`runuser -u munge`), in a directory that user owns.
- slurm.conf needs no cgroups, accounting or mail: proctrack/linuxproc, task/none,
  select/cons_tres with CR_Core, MpiDefault=none, MailProg=/bin/true, accounting_storage/none,
  jobacct_gather/none, ReturnToService=2, state/spool/pid/log paths under the temp dir.
  `SlurmdSpoolDir=<dir>/%n` must exist before slurmd starts (else "Domain socket directory ...
  No such file").
- Node lines carry the hardware `slurmd -C` reports for this machine.
- Two nodes on one machine: one `slurmd -N <node>` each, with its own NodeAddr (127.0.0.2 /
  127.0.0.3), NodeHostname and Port (6818 / 6819), and /etc/hosts lines `127.0.0.2 node1` and
  `127.0.0.3 node2`, so that the names `scontrol show hostnames` gives resolve. `srun --nodes=2
  --ntasks=2` then runs one task on each (SLURMD_NODENAME node1 / node2).
- Both "nodes" share hostname, filesystem, ports and CPUs: a job tells them apart by
  SLURM_NODEID, never by `hostname`, and gives each node's torchrun a static --master_addr /
  --master_port / --node_rank (two c10d rendezvous on one host can both think they host the
  store). launch/slurm.sbatch does both.
- Fake GPUs for --gpus-per-node would need gres `File=` entries that are character devices
  (symlinks to /dev/null work, plain files do not); these tests run without GPUs.
- `--signal=B:USR1@60` reached the batch shell about 40 s before the time limit; the tests send
  the same signal at once with `scancel --signal=USR1 --batch`. `scancel` ends a job (CANCELLED,
  exit 0:15) and leaves no processes.
- Without slurmdbd, `sacct` says accounting is disabled: job states come from `scontrol show
  job`, which keeps a finished job for MinJobAge seconds; `sbatch --wait` returns the job's exit
  code.
- The first job waits about 10 s to start (the scheduler's first pass plus --wait polling), later
  ones about 2 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
NODES = (("node1", "127.0.0.2", 6818), ("node2", "127.0.0.3", 6819))
CTLD_PORT = 6817


def ensure_slurm_installed() -> str | None:
    """Install the Debian packages if missing; return why Slurm is unavailable, or None."""
    binaries = ("slurmctld", "slurmd", "sbatch", "munged")
    if all(shutil.which(b) for b in binaries):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "Slurm is not installed and cannot be: needs root and apt-get (Debian)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [
        "apt-get",
        "-o",
        "DPkg::Lock::Timeout=300",
        "install",
        "-y",
        "--no-install-recommends",
        *PACKAGES,
    ]
    # The package lists may be missing in a fresh container: update once, only if needed.
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "update"],
            env=env,
            capture_output=True,
            check=False,
        )
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr[-300:]}"
    missing = [b for b in binaries if not shutil.which(b)]
    return f"installed packages but {missing} not found" if missing else None


def _port_in_use(addr: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((addr, port)) == 0


def _add_hosts_lines() -> None:
    # Left in place at teardown: harmless loopback names another cluster may be using.
    hosts = Path("/etc/hosts")
    text = hosts.read_text()
    names = {tuple(line.split()[:2]) for line in text.splitlines() if line.strip()}
    missing = [f"{addr} {name}" for name, addr, _ in NODES if (addr, name) not in names]
    if missing:
        hosts.write_text(text.rstrip("\n") + "\n" + "\n".join(missing) + "\n")


def _node_hardware() -> str:
    # "CPUs=2 Boards=1 ... RealMemory=24105" as slurmd sees this machine, so nodes don't drain.
    first = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
    return " ".join(first.stdout.splitlines()[0].split()[1:])


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


@dataclass
class SlurmCluster:
    """Start with `start()`, stop with `stop()`; run client commands with `run()`."""

    root: Path
    ctld_port: int = CTLD_PORT
    pid_files: list[Path] = field(default_factory=list)
    munge_dir: Path | None = None

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, env=self.env, capture_output=True, text=True, check=check, timeout=120
        )

    def _write_conf(self, munge_socket: Path) -> None:
        r = self.root
        hardware = _node_hardware()
        nodes = "\n".join(
            f"NodeName={n} NodeAddr={a} NodeHostname={n} Port={p} {hardware} State=UNKNOWN"
            for n, a, p in NODES
        )
        self.conf.write_text(f"""\
ClusterName=chimedtest
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire (default 120 s) is also how long a requeued job waits before it may start again.
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
KillWait=5
# Fast scheduler passes, so a requeued job starts within seconds of becoming eligible.
SchedulerParameters=sched_interval=2,bf_interval=2
InactiveLimit=0
{nodes}
PartitionName=debug Nodes={",".join(n for n, _, _ in NODES)} Default=YES MaxTime=INFINITE State=UP
""")

    def _start_munge(self) -> Path:
        # munged runs as the munge user, which must reach its directory: the root may sit in a
        # private dir (pytest's /tmp/pytest-of-root is 0700), so it lives in /tmp directly.
        mdir = self.munge_dir = Path(tempfile.mkdtemp(prefix="chimed-munge-"))
        mdir.chmod(0o755)
        shutil.chown(mdir, "munge", "munge")
        sock, pid = mdir / "munge.socket", mdir / "munged.pid"
        # munged refuses to run as root and checks its directories belong to the munge user.
        done = subprocess.run(
            [
                "runuser",
                "-u",
                "munge",
                "--",
                "munged",
                f"--socket={sock}",
                f"--pid-file={pid}",
                f"--log-file={mdir}/munged.log",
                f"--seed-file={mdir}/munged.seed",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"munged failed to start: {done.stderr.strip()}")
        self.pid_files.append(pid)
        _wait_for(lambda: sock.exists() and pid.exists(), 10, "munged socket")
        return sock

    def start(self) -> None:
        busy = [p for p in (self.ctld_port,) if _port_in_use("127.0.0.1", p)]
        busy += [p for _, a, p in NODES if _port_in_use(a, p)]
        if busy:
            raise RuntimeError(f"ports {busy} are in use: is another Slurm cluster running?")
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("state", *(f"spool/{n}" for n, _, _ in NODES)):
            (self.root / sub).mkdir(parents=True)
        _add_hosts_lines()
        try:
            self._write_conf(self._start_munge())
            self._daemon(["slurmctld"], self.root / "slurmctld.pid")
            for name, _, _ in NODES:
                self._daemon(["slurmd", "-N", name], self.root / f"slurmd-{name}.pid")
            _wait_for(self._nodes_idle, 60, "both nodes IDLE")
        except BaseException:
            self.stop()
            raise

    def _daemon(self, cmd: list[str], pid_file: Path) -> None:
        self.pid_files.append(pid_file)  # before starting: stop() must find it even on failure
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed to start: {done.stderr.strip()}")
        _wait_for(pid_file.exists, 10, f"{pid_file.name}")

    def _nodes_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.split("\n")
        states = dict(line.split() for line in out if line.strip())
        return all(states.get(n) == "idle" for n, _, _ in NODES)

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, NodeList, ExitCode, ...)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)

    def wait_job(self, job_id: str, states: tuple[str, ...], timeout: float) -> dict[str, str]:
        info: dict[str, str] = {}

        def reached() -> bool:
            info.update(self.job(job_id))
            return info.get("JobState") in states

        _wait_for(reached, timeout, f"job {job_id} in {states} (last {info.get('JobState')})")
        return info

    def stop(self) -> None:
        """Cancel leftover jobs, then stop the daemons by the PIDs in their pid files."""
        if self.conf.exists():
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                deadline = time.monotonic() + 15
                while (
                    self.run("squeue", "-h", check=False).stdout.strip()
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.5)
        for pid_file in reversed(self.pid_files):  # slurmds, slurmctld, then munged
            if not pid_file.exists():
                continue
            pid = int(pid_file.read_text().split()[0])
            if not _pid_alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pid_files.clear()
        if self.munge_dir:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
