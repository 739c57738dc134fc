"""The five phases of a rejection-sampling round; megatron_chimed/stages/rs.py runs them in order.

Each phase is `phase(round, out_dir) -> statistics` and is called on every rank; rank 0's
statistics go into the phase's DONE marker. Prompts and selection are small and done by rank 0
alone; generation and scoring are split into shards of `shard_prompts` prompts, dealt to the
data-parallel groups, and each shard is written by its group's TP rank 0 once complete.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import statistics
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch.distributed as dist
from tqdm import tqdm

from megatron_chimed.config.stages import RSConfig
from megatron_chimed.data.sft import SFTDataConfig
from megatron_chimed.data.sft.readers import read_source
from megatron_chimed.data.template import ASSISTANT, USER
from megatron_chimed.rejection_sampling import files
from megatron_chimed.rejection_sampling.selection import (
    kept_records,
    kept_stats,
    rule_stats,
    score_stats,
)

log = logging.getLogger(__name__)

PROMPTS, KEPT = "prompts.jsonl", "kept.jsonl"


@dataclasses.dataclass
class Round:
    """One round: the run's config, its RS settings and the policy that answers."""

    cfg: object  # RunConfig
    rs: RSConfig  # the run's `rs` section
    data: SFTDataConfig  # the SFT sources the prompts are drawn from
    index: int
    policy: str  # checkpoint (root or iter_*) of this round's policy
    tokenizer_dir: Path

    def dir(self, phase: str) -> Path:
        return files.phase_dir(self.cfg.run_dir, self.index, phase)

    @cached_property
    def prompts(self) -> list[dict]:
        return files.read_jsonl(self.dir("prompts") / PROMPTS)

    @property
    def num_shards(self) -> int:
        return -(-len(self.prompts) // self.rs.shard_prompts)

    def shard_prompts(self, shard: int) -> list[dict]:
        size = self.rs.shard_prompts
        return self.prompts[shard * size : (shard + 1) * size]


def rank0() -> bool:
    return dist.get_rank() == 0


def single_turn_prompts(data: SFTDataConfig) -> list[dict]:
    """Every distinct single-turn prompt of the SFT sources, with the record's system prompt or
    else the source's instruction put before it, as the SFT encoder does. Single-turn only: the
    reward model scores a (prompt, answer) pair, and a ShareGPT record with history would also
    train the history's answers. A prompt-only source (format qa, `columns.response: null`,
    any file type) gives its prompts too."""
    seen, prompts = set(), []
    for source in data.sources:
        records = read_source(source)
        for record in tqdm(records, desc=f"RS prompts {source.name}", disable=not rank0()):
            messages = record["messages"]
            if [m["role"] for m in messages] not in ([USER, ASSISTANT], [USER]):
                continue
            text = messages[0]["content"].strip()
            instruction = record.get("system") or source.instruction
            if text and instruction:
                text = f"{instruction}\n\n{text}"
            if text and text not in seen:
                seen.add(text)
                prompts.append({"source": source.name, "prompt": text})
    return prompts


def sample_prompts(rnd: Round, out: Path) -> dict:
    """(a) `num_prompts` prompts drawn without replacement; each round draws afresh."""
    if not rank0():
        return {}
    pool = single_turn_prompts(rnd.data)
    if not pool:
        raise ValueError("data.sources: no single-turn prompt to sample from")
    rng = np.random.default_rng([rnd.data.seed, rnd.index])
    picked = rng.permutation(len(pool))[: rnd.rs.num_prompts]
    if len(picked) < rnd.rs.num_prompts:
        log.warning("RS: only %d distinct prompts for num_prompts=%d", len(pool), len(picked))
    rows = [{"id": i, **pool[j]} for i, j in enumerate(picked.tolist())]
    files.write_jsonl(out / PROMPTS, rows)
    return {"pool": len(pool), "prompts": len(rows)}


def for_my_shards(rnd: Round, out: Path, desc: str, work: Callable[[int], list[dict]]) -> None:
    """Run `work(shard)` for this DP group's unfinished shards and write what it returns;
    return once every group has written all of its shards."""
    from megatron.core import parallel_state as ps

    dp_rank, dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    writer = ps.get_tensor_model_parallel_rank() == 0
    mine = range(dp_rank, rnd.num_shards, dp_size)
    # Every TP rank of a group sees the same files, so all of them skip the same shards.
    todo = [s for s in mine if not files.shard_path(out, s).is_file()]
    for shard in tqdm(todo, desc=f"RS {desc}", unit="shard", disable=not rank0()):
        rows = work(shard)
        if writer:
            files.write_jsonl(files.shard_path(out, shard), rows)
    dist.barrier()


def generate_answers(rnd: Round, out: Path) -> dict:
    """(b) `num_samples` answers per prompt from the policy, sampled with a seed per (round,
    shard): a shard redone after a kill gets the same answers, at any DP size."""
    from megatron_chimed.generation import generate
    from megatron_chimed.generation.dynamic import close as close_engine
    from megatron_chimed.generation.loading import load_for_generation

    tp = rnd.cfg.parallel.tensor_model_parallel_size
    model, tokenizer = load_for_generation(rnd.policy, tp, rnd.cfg.precision)

    def work(shard: int) -> list[dict]:
        seed = np.random.SeedSequence([rnd.rs.generation.seed, rnd.index, shard])
        gen = dataclasses.replace(
            rnd.rs.generation,
            num_samples=rnd.rs.num_samples,
            template=rnd.data.template,  # the template the policy was fine-tuned with
            seed=int(seed.generate_state(1)[0]),
        )
        rows = rnd.shard_prompts(shard)
        chats = [[{"role": USER, "content": row["prompt"]}] for row in rows]
        answers = generate(model, tokenizer, chats, gen)
        return [{**row, "answers": a} for row, a in zip(rows, answers)]

    try:
        for_my_shards(rnd, out, "generate", work)
    finally:
        close_engine(model)  # the KV pool and CUDA graphs, before the reward model loads
    if not rank0():
        return {}
    answers = [a for row in files.read_shards(out, rnd.num_shards) for a in row["answers"]]
    return {
        "answers": len(answers),
        "mean_answer_chars": statistics.fmean(len(a) for a in answers),
        "blank_answers": sum(not a.strip() for a in answers),
    }


def score_answers(rnd: Round, out: Path) -> dict:
    """(c) one reward per (prompt, answer). The RM is loaded only now, after the generation
    phase returned and the policy was freed: at 13B, TP=2, policy + RM + KV cache do not fit
    one GPU's memory together (the tiny test model would, but the code path is one)."""
    from megatron_chimed.data.template import get_template
    from megatron_chimed.reward.score import load_reward_model, score_texts

    tp = rnd.cfg.parallel.tensor_model_parallel_size
    model, tokenizer, context = load_reward_model(rnd.rs.reward_checkpoint, tp, rnd.cfg.precision)
    template, n = get_template(rnd.data.template), rnd.rs.num_samples

    def work(shard: int) -> list[dict]:
        rows = files.read_jsonl(files.shard_path(rnd.dir("generate"), shard))
        pairs = [(row["prompt"], a) for row in rows for a in row["answers"]]
        scores = score_texts(
            model, tokenizer, pairs, template, context,
            batch_size=rnd.rs.score_batch_size, batch_tokens=rnd.rs.score_batch_tokens,
        )  # fmt: skip
        return [{**row, "scores": scores[i * n : (i + 1) * n]} for i, row in enumerate(rows)]

    for_my_shards(rnd, out, "score", work)
    if not rank0():
        return {}
    return score_stats(list(files.read_shards(out, rnd.num_shards)))


def select_answers(rnd: Round, out: Path) -> dict:
    """(d) the answers `rs.selection` keeps (the top_k of each prompt, or the top_m of the
    round), above `score_threshold`, as ShareGPT SFT data. The statistics also say what each
    rule would keep (`rules`), so the report compares them on the same scores."""
    if not rank0():
        return {}
    rs = rnd.rs
    rows = list(files.read_shards(rnd.dir("score"), rnd.num_shards))
    kept = kept_records(rows, rs.top_k, rs.score_threshold, rs.selection, rs.top_m)
    if not kept:
        raise ValueError(
            f"RS round {rnd.index}: no answer kept; rs.score_threshold="
            f"{rs.score_threshold} is above every score (mean {score_stats(rows)['mean']:.3f})"
        )
    files.write_jsonl(out / KEPT, kept)
    rules = rule_stats(rows, rs.top_k, rs.top_m, rs.score_threshold)
    return {"selection": rs.selection, **kept_stats(rows, kept), "rules": rules}


def fine_tune(rnd: Round, out: Path) -> dict | None:
    """(e) the SFT stage on the kept answers, from this round's policy, with the run's
    optimizer and training settings (conf/stage/rs.yaml). Its run_dir is `out`: checkpoints,
    metrics and resume work as for any stage. None when the loop stopped early (preemption)."""
    from megatron_chimed.stages.sft import SFTStage
    from megatron_chimed.tokenizer import load_tokenizer
    from megatron_chimed.training.loop import train

    cfg = sft_run_config(rnd, out)
    state = train(cfg, SFTStage(cfg, load_tokenizer(rnd.tokenizer_dir)), rnd.tokenizer_dir)
    if state.status != "done":
        return None
    return {"iterations": state.iteration, "checkpoints": str(out / "checkpoints")}


def sft_run_config(rnd: Round, out: Path):
    """The run config of the SFT stage: this run's, on the kept data, from the policy."""
    cfg = copy.deepcopy(rnd.cfg)
    cfg.run_dir, cfg.checkpoint.load = str(out), rnd.policy
    data = {f.name: getattr(rnd.data, f.name) for f in dataclasses.fields(SFTDataConfig)}
    kept = rnd.dir("select") / KEPT
    data["sources"] = [{"name": f"rs_round_{rnd.index}", "reader": "sharegpt", "path": str(kept)}]
    cfg.data = data
    return cfg
