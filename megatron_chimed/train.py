"""Entry point of every training stage, run by torchrun (launch/torchrun.sh, Slurm):

    torchrun --nproc_per_node=2 -m megatron_chimed.train stage=cpt parallel=tp2_cpu \
        training=tiny run_dir=runs/cpt checkpoint.load=ckpt/tiny training.tokenizer=...

Arguments are Hydra overrides of conf/. A start resumes from run_dir/checkpoints/latest when
it exists; otherwise it loads `checkpoint.load` (weights only) or starts from random weights.
Exits 0 after a preemption checkpoint (SIGTERM, SIGUSR1 or a first Ctrl-C), so the Slurm job can
be requeued; a Ctrl-C before the first step ends the run at once, nothing saved (exit 130,
training/startup.py). While it runs, the run_dir is locked (training/run_lock.py): a second job
on it refuses to start. A user error (config, data, path, a locked run_dir) is one line (exit 2,
launch/rank_main.py); rank 0 keeps everything in run_dir/train.log (run_log.py).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from megatron_chimed.checkpoint import layout


def _loaded_tokenizer(load: str) -> list[Path]:
    """Where the checkpoint `load` names keeps its tokenizer (ours, Megatron-LM's or Bridge's
    place: checkpoint/layout.py tokenizer_dir); none when it is no checkpoint (said later)."""
    try:
        ckpt = layout.resolve(load)
        return [layout.tokenizer_dir(ckpt, layout.read_metadata(ckpt))]
    except (FileNotFoundError, ValueError):
        return []


def tokenizer_dir(cfg) -> Path:
    """training.tokenizer, else the tokenizer/ of the run's own or the loaded checkpoints."""
    candidates = [Path(cfg.run_dir) / "checkpoints" / layout.TOKENIZER]
    if cfg.checkpoint.load:
        load = Path(cfg.checkpoint.load)
        candidates += [load / layout.TOKENIZER, load.parent / layout.TOKENIZER]
        candidates += _loaded_tokenizer(cfg.checkpoint.load)
    if cfg.training.tokenizer:
        candidates = [Path(cfg.training.tokenizer)]
    from megatron_chimed.tokenizer import has_tokenizer

    for candidate in candidates:
        if has_tokenizer(candidate):
            return candidate
    raise FileNotFoundError(
        f"no tokenizer.model or tokenizer.json in {[str(c) for c in candidates]}: "
        "set training.tokenizer"
    )


def main(argv: list[str]) -> int:
    from megatron_chimed.training import startup

    # First: a Ctrl-C from here to the first step ends the run in one line (training/startup.py).
    previous = {sig: signal.getsignal(sig) for sig in startup.SIGNALS}
    startup.guard()
    try:
        return _main(argv)
    finally:  # main() may run again in this process (tests)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(argv: list[str]) -> int:
    from megatron_chimed import config, run_log
    from megatron_chimed.platform import destroy, initialize
    from megatron_chimed.stages import import_object, stage_spec
    from megatron_chimed.tokenizer import load_tokenizer
    from megatron_chimed.training import run_lock
    from megatron_chimed.training.loop import train
    from megatron_chimed.training.preemption import mark_preempted

    cfg = config.load(argv)
    if not cfg.stage:
        raise config.ConfigError("no stage selected: add stage=cpt (or sft, rm, rs)")
    spec = stage_spec(cfg.stage)
    implementation = import_object(spec.implementation)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    run_log.quiet_console(rank0)  # megatron's notices and warnings: train.log only
    initialize(cfg.parallel.tensor_model_parallel_size, cfg.seed)
    # Refused (RunLocked), or a checkpoint that cannot be used (CheckpointError, raised alike on
    # every rank): one line, from the entry point (launch/rank_main.py).
    lock = run_lock.hold(cfg.run_dir)
    # Every start appends to one log kept with the run; only once the run_dir is ours.
    log_file = Path(cfg.run_dir) / "train.log" if rank0 else None
    try:
        with run_log.command_log(log_file, rank0):
            status = _run(cfg, spec, implementation, load_tokenizer, train)
        if status == "preempted" and rank0:  # the checkpoint is complete on every rank
            mark_preempted()
        destroy()
    finally:
        if lock is not None:
            lock.release()
    return 0


def _run(cfg, spec, implementation, load_tokenizer, train) -> str:
    """The stage: its loop, or an orchestrator that runs the loop itself; its final status."""
    log = logging.getLogger(__name__)
    tokenizer = tokenizer_dir(cfg)
    if not spec.loop:
        status = implementation(cfg, tokenizer)
        log.info("stage %s: %s", cfg.stage, status)
        return status
    state = train(cfg, implementation(cfg, load_tokenizer(tokenizer)), tokenizer)
    log.info("%s at iteration %d (%d samples)", state.status, state.iteration,
             state.consumed_samples)  # fmt: skip
    return state.status


if __name__ == "__main__":  # dist_checkpointing's spawned helper re-imports __main__
    from megatron_chimed.launch.rank_main import report_errors

    sys.exit(report_errors("chimed train", lambda: main(sys.argv[1:])))
