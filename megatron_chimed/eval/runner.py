"""``run_eval``: one task or a suite from the Hydra ``eval`` config, on any EvalModel.

Data parallelism: each data-parallel rank evaluates a strided shard of the prompts
(``shard``), the shards' outputs are gathered back into the original order, and every rank
computes the same metrics; only rank 0 writes files. The gather itself is injected
(``torch.distributed.all_gather_object`` in a distributed launch), so this module stays
runnable without a process group.
Each task starts and ends with a line on the ``megatron_chimed.eval`` logger (progress.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from megatron_chimed.config.eval import DEFAULT_SEEDS, EvalSuiteConfig, EvalTaskConfig
from megatron_chimed.config.load import eval_section

from .bias import BiasTask
from .loglikelihood import require_loglikelihood
from .model_api import EvalModel, TemplatedModel, with_sampling
from .multichoice import MultiChoiceTask
from .ner import NERTask
from .open_qa import TextGenerationTask
from .progress import ProgressModel, headline, log
from .report import run_over_seeds, write_results

T = TypeVar("T")
Gather = Callable[[list], list[list]]  # this rank's list -> every rank's list, by rank

# config/eval.py EVAL_TASKS types each kind's config; these run it.
TASKS: dict[str, Callable[[Any], Any]] = {
    "multichoice": MultiChoiceTask,
    "text_generation": TextGenerationTask,
    "ner": NERTask,
    "bias": BiasTask,
}


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Items rank, rank+world, ... : strided so long and short prompts spread evenly."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of size {world}")
    return list(items[rank::world])


def unshard(per_rank: list[list[T]], total: int) -> list[T]:
    """Inverse of ``shard`` over all ranks: back to the original order."""
    merged: list[T | None] = [None] * total
    world = len(per_rank)
    for rank, part in enumerate(per_rank):
        if len(part) != len(range(rank, total, world)):
            raise ValueError(f"rank {rank} returned {len(part)} results for its shard")
        merged[rank::world] = part
    return merged  # type: ignore[return-value]


class ShardedModel:
    """Runs this rank's shard of every call on the wrapped model and gathers all shards."""

    def __init__(self, model: EvalModel, rank: int, world: int, gather: Gather) -> None:
        self.model, self.rank, self.world, self.gather = model, rank, world, gather

    def generate(self, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
        local = self.model.generate(shard(prompts, self.rank, self.world), max_new_tokens, seed)
        return unshard(self.gather(local), len(prompts))

    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[list[float]]:
        local = self.model.next_token_logprobs(shard(prompts, self.rank, self.world), candidates)
        return unshard(self.gather(local), len(prompts))

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        scorer = require_loglikelihood(self.model, "scoring continuations")
        local = scorer.loglikelihood(shard(requests, self.rank, self.world))
        return unshard(self.gather(local), len(requests))

    def with_sampling(self, temperature: float | None, top_p: float | None) -> ShardedModel:
        sampled = with_sampling(self.model, temperature, top_p)
        return ShardedModel(sampled, self.rank, self.world, self.gather)


def _single_process_gather(local: list) -> list[list]:
    return [local]


def run_task(name: str, cfg: EvalTaskConfig, model: EvalModel, seeds: list[int]) -> dict[str, Any]:
    templated = TemplatedModel(model, cfg.prompt_template())
    return run_over_seeds(name, TASKS[cfg.task](cfg), templated, seeds)


def run_eval(
    cfg: Any,
    model: EvalModel,
    out_dir: str | Path | None,
    rank: int = 0,
    world: int = 1,
    gather: Gather | None = None,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one task or every task of a suite (the `eval` section: typed, or a DictConfig/dict
    that config/load.py `eval_section` types); return the results.

    Rank 0 writes ``{name}.json`` (with ``run_info``, e.g. the model evaluated, under "run"),
    ``{name}.md`` and every task's predictions (report.py `predictions_path`) into
    ``out_dir``; ``out_dir=None`` writes nothing (e.g. on TP ranks > 0, which share
    data-parallel rank 0).
    """
    if world > 1 and gather is None:
        raise ValueError("world > 1 needs a gather function (e.g. all_gather_object)")
    if world > 1:
        model = ShardedModel(model, rank, world, gather)
    section = eval_section(cfg)
    if section is None:
        raise ValueError("no eval task: the eval section is empty")
    progress = ProgressModel(model)
    if isinstance(section, EvalSuiteConfig):
        suite_seeds = list(section.seeds or DEFAULT_SEEDS)
        tasks = [(name, t, list(t.seeds or suite_seeds)) for name, t in section.tasks.items()]
        stem = section.name
    else:
        stem = section.name or section.task
        tasks = [(stem, section, list(section.seeds or DEFAULT_SEEDS))]
    results = []
    for number, (name, task, seeds) in enumerate(tasks, start=1):
        log.info("task %d/%d %s ...", number, len(tasks), name)
        start = time.monotonic()
        progress.start(name)
        results.append(run_task(name, task, progress, seeds))
        log.info("task %d/%d %s done in %.0fs, %s", number, len(tasks), name,
                 time.monotonic() - start, headline(results[-1]))  # fmt: skip
    suite = isinstance(section, EvalSuiteConfig)
    output: dict[str, Any] = {"tasks": results} if suite else results[0]
    if rank == 0 and out_dir is not None:
        json_path, md_path, predictions = write_results(Path(out_dir), stem, results, run_info)
        output["files"] = {
            "json": str(json_path),
            "markdown": str(md_path),
            "predictions": [str(p) for p in predictions],
        }
    return output
