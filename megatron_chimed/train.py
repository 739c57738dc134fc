"""Entry point of every training stage, run by torchrun (launch/torchrun.sh, Slurm):

    torchrun --nproc_per_node=2 -m megatron_chimed.train stage=cpt parallel=tp2_cpu \
        training=tiny run_dir=runs/cpt checkpoint.load=ckpt/tiny training.tokenizer=...

Arguments are Hydra overrides of conf/. A start resumes from run_dir/checkpoints/latest when
it exists; otherwise it loads `checkpoint.load` (weights only) or starts from random weights.
Exits 0 after a preemption checkpoint (SIGTERM, SIGUSR1 or a first Ctrl-C), so the Slurm job can
be requeued. While it runs, the run_dir is locked (training/run_lock.py): a second job on it
refuses to start.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from megatron_chimed.checkpoint import CheckpointError, layout


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
    from megatron_chimed import config
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
    initialize(cfg.parallel.tensor_model_parallel_size, cfg.seed)
    import torch.distributed as dist

    logging.basicConfig(
        level=logging.INFO if dist.get_rank() == 0 else logging.WARNING,
        format="%(asctime)s %(message)s",
    )
    rank0 = dist.get_rank() == 0
    ours = logging.getLogger("megatron_chimed")
    ours.setLevel(logging.INFO if rank0 else logging.WARNING)  # also when logging was set up
    try:
        lock = run_lock.hold(cfg.run_dir)
    except run_lock.RunLocked as err:
        if rank0:
            print(f"chimed train: {err}", file=sys.stderr)
        destroy()
        return 1
    if rank0:  # every start appends our lines to one log kept with the run
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(Path(cfg.run_dir) / "train.log", encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        ours.addHandler(to_file)
    try:
        tokenizer = tokenizer_dir(cfg)
        if not spec.loop:  # an orchestrator runs the loop itself
            status = implementation(cfg, tokenizer)
            logging.getLogger(__name__).info("stage %s: %s", cfg.stage, status)
        else:
            state = train(cfg, implementation(cfg, load_tokenizer(tokenizer)), tokenizer)
            status = state.status
            logging.getLogger(__name__).info(
                "%s at iteration %d (%d samples)", status, state.iteration, state.consumed_samples
            )
        if status == "preempted" and rank0:  # the checkpoint is complete on every rank
            mark_preempted()
        destroy()
    except CheckpointError as err:  # raised alike on every rank: said once, no traceback
        if rank0:
            print(f"chimed train: {err}", file=sys.stderr)
        destroy()
        return 1
    finally:
        if lock is not None:
            lock.release()
        for handler in ours.handlers[:]:  # main() may run again in this process (tests)
            ours.removeHandler(handler)
            handler.close()
    return 0


if __name__ == "__main__":  # dist_checkpointing's spawned helper re-imports __main__
    sys.exit(main(sys.argv[1:]))
