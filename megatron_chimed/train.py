"""Entry point of every training stage, run by torchrun (launch/torchrun.sh, Slurm):

    torchrun --nproc_per_node=2 -m megatron_chimed.train stage=cpt parallel=tp2_cpu \
        training=tiny run_dir=runs/cpt checkpoint.load=ckpt/tiny training.tokenizer=...

Arguments are Hydra overrides of conf/. A start resumes from run_dir/checkpoints/latest when
it exists; otherwise it loads `checkpoint.load` (weights only) or starts from random weights.
Exits 0 after a preemption checkpoint (SIGTERM / SIGUSR1), so the Slurm job can be requeued.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from megatron_chimed.checkpoint import layout


def tokenizer_dir(cfg) -> Path:
    """training.tokenizer, else the tokenizer/ of the run's own or the loaded checkpoints."""
    candidates = [Path(cfg.run_dir) / "checkpoints" / layout.TOKENIZER]
    if cfg.checkpoint.load:
        load = Path(cfg.checkpoint.load)
        candidates += [load / layout.TOKENIZER, load.parent / layout.TOKENIZER]
    if cfg.training.tokenizer:
        candidates = [Path(cfg.training.tokenizer)]
    for candidate in candidates:
        if (candidate / "tokenizer.model").is_file():
            return candidate
    raise FileNotFoundError(
        f"no tokenizer.model in {[str(c) for c in candidates]}: set training.tokenizer"
    )


def main(argv: list[str]) -> int:
    from megatron_chimed import config
    from megatron_chimed.platform import destroy, initialize
    from megatron_chimed.stages import import_object, stage_spec
    from megatron_chimed.tokenizer import ZiyaTokenizer
    from megatron_chimed.training.loop import train

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
    tokenizer = tokenizer_dir(cfg)
    if not spec.loop:  # an orchestrator runs the loop itself
        status = implementation(cfg, tokenizer)
        logging.getLogger(__name__).info("stage %s: %s", cfg.stage, status)
    else:
        state = train(cfg, implementation(cfg, ZiyaTokenizer(tokenizer)), tokenizer)
        logging.getLogger(__name__).info(
            "%s at iteration %d (%d samples)", state.status, state.iteration, state.consumed_samples
        )
    destroy()
    return 0


if __name__ == "__main__":  # dist_checkpointing's spawned helper re-imports __main__
    sys.exit(main(sys.argv[1:]))
