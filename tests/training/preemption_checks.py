"""One process (world 1, no torchrun) of the tiny CPT run, started in a session of its own.

It saves at iteration 1 (checkpoint.save_interval=1); during iteration 2 it sends SIGUSR1 and
SIGTERM to its whole process group, as `scancel --signal` or `kill -TERM -PGID` do: the
checkpoint writer's Manager child and the resource tracker get them too. The loop must then
save again (the preemption save) and stop. The process writes what it saw to --out and waits
to be SIGKILLed by tests/training/test_preemption.py, which then looks for leftover children.
"""

import argparse
import json
import os
import signal
import time
from pathlib import Path

import psutil

from megatron_chimed import config
from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.platform import initialize
from megatron_chimed.stages.cpt import PretrainStage
from megatron_chimed.tokenizer import ZiyaTokenizer
from megatron_chimed.training.loop import train

seen: dict = {}


def helpers() -> dict[str, int]:
    """This process's multiprocessing children: the Manager and the resource tracker."""
    found = {}
    for child in psutil.Process().children():
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:  # killed (a zombie until reaped)
            continue
        if "resource_tracker" in line:
            found["tracker"] = child.pid
        elif "spawn_main" in line:
            found["manager"] = child.pid
    return found


class SignallingStage(PretrainStage):
    """Signals the process group once the first checkpoint is on disk."""

    def forward_step(self, data_iterator, model):
        if not seen and (Path(self.cfg.run_dir) / "checkpoints" / "latest").exists():
            seen["before"] = helpers()
            os.killpg(0, signal.SIGUSR1)
            os.killpg(0, signal.SIGTERM)
            time.sleep(1)  # a child the signals kill is gone by now
            seen["after_signals"] = helpers()
        return super().forward_step(data_iterator, model)


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("out", "run-dir", "data", "tokenizer"):
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    cfg = config.load(
        [
            "stage=cpt",
            "parallel=tp1",
            "training=tiny",
            f"run_dir={args.run_dir}",
            "training.train_iters=4",
            "checkpoint.save_interval=1",
            "training.eval_interval=0",
            "training.tensorboard=false",
            f"data.blend=[1.0,{args.data}]",
        ]
    )
    initialize(1, 1234)
    state = train(cfg, SignallingStage(cfg, ZiyaTokenizer(args.tokenizer)), args.tokenizer)
    latest = (Path(args.run_dir) / "checkpoints" / "latest").read_text().strip()
    result = {**seen, "status": state.status, "iteration": state.iteration, "latest": latest}
    atomic_write_text(args.out, json.dumps(result))  # the test polls for it
    time.sleep(600)  # until the test SIGKILLs this process


if __name__ == "__main__":  # dist_checkpointing's spawned helper re-imports __main__
    main()
