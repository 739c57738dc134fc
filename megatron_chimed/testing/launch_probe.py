"""Stand-in for `megatron_chimed.train` that proves the launch layer (not a trainer).

Run under torchrun like the trainer, with Hydra-style `key=value` arguments; it reads `run_dir`,
`probe.steps` and `probe.step_s` and ignores the rest. It keeps the trainer's launch contract:
- initialises torch.distributed (gloo) from the torchrun env and all_reduces;
- each "step" all_reduces a value that depends on the step, so the final total is known;
- on SIGUSR1/SIGTERM/SIGINT the ranks agree (all_reduce MAX of the flag) to stop at the same step
  boundary, rank 0 writes `checkpoints/step_N.json` and the `latest` pointer, all exit 0;
- a start resumes from `latest`.
Each rank appends JSON events (start, checkpoint, done) to `run_dir/probe/rank<R>.jsonl` and
rank 0 writes the last finished step to `run_dir/probe/progress`.

Failure modes, for the launcher's error reporting: `probe.startup_s=S` spends S seconds in the
trainer's start-up window (training/startup.py guard, `run_dir/probe/starting<R>` written when
it begins); `probe.fail=RANKS` (e.g. `all`, `1`) raises a user error (ConfigError) on those
ranks after the first collective, as a bad data file found by the ranks would.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def _args(argv: list[str]) -> dict[str, str]:
    return dict(a.lstrip("+").split("=", 1) for a in argv if "=" in a)


def expected_total(steps: int, world: int) -> float:
    """The final total of an uninterrupted run: sum over steps s and ranks r of s * (r + 1)."""
    return steps * (steps + 1) / 2 * world * (world + 1) / 2


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_latest(ckpt_dir: Path) -> tuple[int, float]:
    latest = ckpt_dir / "latest"
    if not latest.exists():
        return 0, 0.0
    state = json.loads((ckpt_dir / latest.read_text().strip()).read_text())
    return state["step"], state["total"]


def _save(ckpt_dir: Path, step: int, total: float) -> None:
    if dist.get_rank() == 0:
        name = f"step_{step:06d}.json"
        _write_atomic(ckpt_dir / name, json.dumps({"step": step, "total": total}))
        _write_atomic(ckpt_dir / "latest", name)
    dist.barrier()  # nobody exits (or resumes) before the checkpoint is complete


def _start_up(run_dir: Path, seconds: float) -> None:
    """The trainer's start-up window: a Ctrl-C here ends the run (StartupInterrupted)."""
    from megatron_chimed.training import startup

    startup.guard()
    (run_dir / "probe").mkdir(parents=True, exist_ok=True)
    (run_dir / "probe" / f"starting{os.environ.get('RANK', '0')}").write_text("")
    time.sleep(seconds)


def main(argv: list[str]) -> int:
    args = _args(argv)
    run_dir = Path(args["run_dir"])
    steps, step_s = int(args.get("probe.steps", "3")), float(args.get("probe.step_s", "0"))
    if float(args.get("probe.startup_s", "0")):
        _start_up(run_dir, float(args["probe.startup_s"]))
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum  # acted upon at the next step boundary, by all ranks at once

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # a Ctrl-C, relayed by launch/torchrun.py

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ckpt_dir, probe_dir = run_dir / "checkpoints", run_dir / "probe"
    for d in (ckpt_dir, probe_dir):
        d.mkdir(parents=True, exist_ok=True)
    events = (probe_dir / f"rank{rank}.jsonl").open("a", buffering=1)

    def event(**fields: object) -> None:
        events.write(json.dumps(fields) + "\n")
        print(f"probe rank {rank}: {fields}", flush=True)

    check = torch.tensor([float(rank + 1)])
    dist.all_reduce(check)
    failing = args.get("probe.fail", "")
    if failing == "all" or str(rank) in failing.split(","):
        from megatron_chimed.config import ConfigError

        raise ConfigError("probe.fail: corpus.jsonl:3: field 'text' is missing (see --json-keys)")
    step, total = _load_latest(ckpt_dir)
    event(
        event="start",
        rank=rank,
        world=world,
        node_rank=int(os.environ["GROUP_RANK"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        slurm_nodeid=os.environ.get("SLURM_NODEID"),
        slurmd_nodename=os.environ.get("SLURMD_NODENAME"),
        restart=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        allreduce=check.item(),
        resumed_from=step,
        pid=os.getpid(),
    )
    while step < steps:
        time.sleep(step_s)
        step += 1
        value = torch.tensor([float(step * (rank + 1))])
        dist.all_reduce(value)
        total += value.item()
        flag = torch.tensor([float(stop["signal"])])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if rank == 0:
            _write_atomic(probe_dir / "progress", str(step))
        if flag.item() and step < steps:
            _save(ckpt_dir, step, total)
            event(event="checkpoint", step=step, total=total, signal=int(flag.item()))
            break
    else:
        _save(ckpt_dir, step, total)
        event(event="done", step=step, total=total)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
