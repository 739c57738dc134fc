"""What `chimed eval` says while it runs: each task as it starts and ends, and in a long task
how many questions are done.

Lines go to the ``megatron_chimed.eval`` logger (the console shows rank 0's, run_log.py), e.g.

    task 3/9 medqa ...
      medqa: 1024/3426 questions done
    task 3/9 medqa done in 412s, acc_micro=61.20, acc_macro=60.85

A task hands the model all its prompts in one call; to count them, `ProgressModel` passes a call
of more than PROGRESS_CHUNK prompts on in chunks of that many and says the count at most every
PROGRESS_EVERY_S. The chunk is a multiple of the batch sizes in use, so on one data-parallel rank
the batches, and greedy or log-prob results, are those of one call (sampling draws per chunk).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .loglikelihood import require_loglikelihood
from .model_api import EvalModel, with_sampling

PROGRESS_CHUNK = 256
PROGRESS_EVERY_S = 30.0
log = logging.getLogger("megatron_chimed.eval")


class ProgressModel:
    """Counts the questions the current task sent through the model; says so periodically."""

    def __init__(self, model: EvalModel, clock: Callable[[], float] = time.monotonic) -> None:
        self.model, self.clock = model, clock
        self.task, self.last = "", clock()

    def start(self, task: str) -> None:
        self.task, self.last = task, self.clock()

    def _in_chunks(self, prompts: list[str], call: Callable[[list[str]], list]) -> list:
        out: list = []
        for first in range(0, len(prompts), PROGRESS_CHUNK):
            out += call(prompts[first : first + PROGRESS_CHUNK])
            if self.clock() - self.last >= PROGRESS_EVERY_S:
                self.last = self.clock()
                done = min(first + PROGRESS_CHUNK, len(prompts))
                log.info("  %s: %d/%d questions done", self.task, done, len(prompts))
        return out

    def generate(self, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
        return self._in_chunks(prompts, lambda few: self.model.generate(few, max_new_tokens, seed))

    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[list[float]]:
        return self._in_chunks(prompts, lambda few: self.model.next_token_logprobs(few, candidates))

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        scorer = require_loglikelihood(self.model, "scoring continuations")
        return self._in_chunks(requests, scorer.loglikelihood)  # type: ignore[arg-type]

    def with_sampling(self, temperature: float | None, top_p: float | None) -> ProgressModel:
        sampled = ProgressModel(with_sampling(self.model, temperature, top_p), self.clock)
        sampled.task, sampled.last = self.task, self.last
        return sampled


def headline(result: dict[str, Any]) -> str:
    """The task's metrics for one line: the aggregates, without per-subject ones (`acc/x`)."""
    scores = {k: v for k, v in result["mean"].items() if isinstance(v, float)}
    overall = {k: v for k, v in scores.items() if "/" not in k} or scores
    return ", ".join(f"{k}={v:.2f}" for k, v in overall.items())
