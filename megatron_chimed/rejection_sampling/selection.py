"""Phase (d) of rejection sampling as pure functions: the top-k answers of each prompt, the
kept data as ShareGPT SFT records, and the score statistics."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def select_top_k(scores: Sequence[float], k: int, threshold: float | None = None) -> list[int]:
    """Indices of the (at most) k best answers, best first, keeping only scores above
    `threshold` when one is given. Equal scores go to the lower index (the answer drawn first),
    so the choice depends on the scores alone, not on sort stability or the order of shards."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    if threshold is not None:
        order = [j for j in order if scores[j] > threshold]
    return order[:k]


def sharegpt_record(prompt: str, answer: str, **extra) -> dict:
    """One kept answer in the format the SFT `sharegpt` reader reads."""
    conversations = [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]
    return {"conversations": conversations, **extra}


def kept_records(rows: Sequence[dict], k: int, threshold: float | None) -> list[dict]:
    """ShareGPT records of the top-k answers of every scored row ({id, prompt, answers,
    scores}). Blank answers are never kept: the SFT reader drops them, and a reward model
    may still rank silence above a poor answer."""
    kept = []
    for row in rows:
        scores = [s if row["answers"][j].strip() else float("-inf")
                  for j, s in enumerate(row["scores"])]  # fmt: skip
        for j in select_top_k(scores, k, threshold):
            if scores[j] > float("-inf"):
                kept.append(sharegpt_record(
                    row["prompt"], row["answers"][j], prompt_id=row["id"], answer_index=j,
                    score=row["scores"][j],
                ))  # fmt: skip
    return kept


def score_stats(rows: Sequence[dict]) -> dict:
    """Mean score of all answers and of each prompt's best; their difference is what
    best-of-N selection gains over one sample from the policy."""
    scores = [s for row in rows for s in row["scores"]]
    best = [max(row["scores"]) for row in rows]
    mean = statistics.fmean(scores)
    return {
        "prompts": len(rows),
        "answers": len(scores),
        "mean": mean,
        "std": statistics.pstdev(scores),
        "mean_best": statistics.fmean(best),
        "best_of_n_gain": statistics.fmean(best) - mean,
    }


def kept_stats(rows: Sequence[dict], kept: Sequence[dict]) -> dict:
    """How many answers were kept and how they score against all answers (`kept` not empty)."""
    mean_all = statistics.fmean(s for row in rows for s in row["scores"])
    mean_kept = statistics.fmean(r["score"] for r in kept)
    return {
        "kept": len(kept),
        "prompts_with_kept": len({r["prompt_id"] for r in kept}),
        "mean_all": mean_all,
        "mean_kept": mean_kept,
        "kept_gain": mean_kept - mean_all,
    }
