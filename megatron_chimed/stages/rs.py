"""The rs stage: rounds of (a) prompts -> (b) answers -> (c) rewards -> (d) selection -> (e) SFT.

    torchrun -m megatron_chimed.train stage=rs checkpoint.load=SFT_CKPT \
        rs.reward_checkpoint=RM_CKPT run_dir=runs/rs

Not a training-loop stage: generation and scoring are not a forward_step. Phases hand over
files (files.py), so a job killed anywhere restarts at the phase, and the shard, where it
stopped; the SFT phase resumes from its own checkpoints like any stage. Round r's policy is
round r-1's fine-tuned model; the last round's checkpoints are the stage's result, named in
run_dir/rs_report.json. Statistics (mean reward, best-of-N gain, kept) go to the log and there.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_chimed.data.sft import load_data_config
from megatron_chimed.rejection_sampling import files, phases

log = logging.getLogger(__name__)

# In order. Each returns its statistics, or None when it stopped early (the job ends).
PHASES: dict[str, Callable[[phases.Round, Path], dict | None]] = {
    "prompts": phases.sample_prompts,
    "generate": phases.generate_answers,
    "score": phases.score_answers,
    "select": phases.select_answers,
    "train": phases.fine_tune,
}


def free_memory() -> None:
    """Drop the phase's model before the next phase builds its own (policy, then RM, then the
    SFT model): the caching allocator would otherwise keep the first one's memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_phase(rnd: phases.Round, name: str) -> bool:
    """Run one phase unless its DONE marker exists; False when it stopped early."""
    out, rank0 = rnd.dir(name), dist.get_rank() == 0
    if files.read_done(out) is not None:
        if rank0:
            files.log_event(rnd.cfg.run_dir, rnd.index, name, "skip")
        return True
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        files.log_event(rnd.cfg.run_dir, rnd.index, name, "start")
    dist.barrier()
    stats = PHASES[name](rnd, out)
    free_memory()
    if stats is None:
        return False
    dist.barrier()  # every rank's part is on disk before the phase is declared done
    if rank0:
        files.mark_done(out, stats)
        files.log_event(rnd.cfg.run_dir, rnd.index, name, "done")
        files.write_report(rnd.cfg.run_dir, rnd.rs.rounds, PHASES)
        log.info("RS round %d %s: %s", rnd.index, name, stats)
    dist.barrier()
    return True


def run(cfg, tokenizer_dir: str | Path) -> str:
    """Run or resume every round of the rs stage; return "done", "stopped" (stop_after_phase)
    or "preempted" (the SFT phase saved and exited; rerun the same command)."""
    rs, data = cfg.rs, load_data_config(cfg.data)  # the settings; the prompts' sources
    rs.validate()
    if not cfg.checkpoint.load:
        raise ValueError("checkpoint.load is not set: the rs stage starts from the SFT policy")
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    policy = cfg.checkpoint.load
    for index in range(rs.rounds):
        rnd = phases.Round(cfg, rs, data, index, policy, Path(tokenizer_dir))
        policy = str(rnd.dir("train") / "checkpoints")
        if files.read_done(rnd.dir("train")) is not None:
            continue  # a finished round: stop_after_phase applies to the first unfinished one
        for name in PHASES:
            if not run_phase(rnd, name):
                return "preempted"
            if name == rs.stop_after_phase:
                log.info("RS round %d: stopping after %s (rs.stop_after_phase)", index, name)
                return "stopped"
    log.info("RS: %d round(s) done; the final policy is %s", rs.rounds, policy)
    return "done"
