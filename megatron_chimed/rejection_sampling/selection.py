"""Phase (d) of rejection sampling as pure functions: which answers are kept, the kept data
as ShareGPT SFT records, and the statistics of the report.

Two rules (`rs.selection`), both above `rs.score_threshold` when it is set:
- `top_k`: the top_k best answers of each prompt (best-of-N, Llama-2's rejection sampling);
- `global_top_m`: the top_m best answers of the whole round by reward, wherever their prompts:
  a prompt whose answers all score low gives none, a prompt with several good ones may give
  them all.
Blank answers are never kept (the SFT reader drops them, and a reward model may still rank
silence above a poor answer). Equal scores go to the lower prompt id, then the lower answer
index, so the choice depends on the scores alone, not on sort stability or shard order.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

Pick = tuple[int, int]  # (row position in `rows`, answer index)


def select_top_k(scores: Sequence[float], k: int, threshold: float | None = None) -> list[int]:
    """Indices of the (at most) k best answers, best first, keeping only scores above
    `threshold` when one is given. Equal scores go to the lower index (the answer drawn first)."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    if threshold is not None:
        order = [j for j in order if scores[j] > threshold]
    return order[:k]


def _eligible(rows: Sequence[dict], threshold: float | None) -> list[tuple[float, int, int, int]]:
    """(score, prompt id, row, answer) of every non-blank answer above the threshold."""
    return [
        (score, row["id"], r, j)
        for r, row in enumerate(rows)
        for j, score in enumerate(row["scores"])
        if row["answers"][j].strip() and (threshold is None or score > threshold)
    ]


def pick_top_k(rows: Sequence[dict], k: int, threshold: float | None) -> list[Pick]:
    """Rule `top_k`: the k best non-blank answers of each prompt, prompt by prompt."""
    picks = []
    for r, row in enumerate(rows):
        scores = [s if row["answers"][j].strip() else float("-inf")
                  for j, s in enumerate(row["scores"])]  # fmt: skip
        picks += [(r, j) for j in select_top_k(scores, k, threshold) if scores[j] > float("-inf")]
    return picks


def pick_global_top_m(rows: Sequence[dict], m: int, threshold: float | None) -> list[Pick]:
    """Rule `global_top_m`: the m best non-blank answers of all prompts, best first."""
    ranked = sorted(_eligible(rows, threshold), key=lambda e: (-e[0], e[1], e[3]))
    return [(r, j) for _, _, r, j in ranked[:m]]


def pick(
    rows: Sequence[dict], selection: str, k: int, m: int | None, threshold: float | None
) -> list[Pick]:
    """The answers `selection` keeps (config/stages.py RSConfig checks the settings)."""
    if selection == "top_k":
        return pick_top_k(rows, k, threshold)
    if selection == "global_top_m":
        if m is None:
            raise ValueError("rs.top_m is unset: rs.selection=global_top_m needs it")
        return pick_global_top_m(rows, m, threshold)
    raise ValueError(f"rs.selection={selection!r}: expected 'top_k' or 'global_top_m'")


def sharegpt_record(prompt: str, answer: str, **extra) -> dict:
    """One kept answer in the format the SFT `sharegpt` reader reads."""
    conversations = [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]
    return {"conversations": conversations, **extra}


def records(rows: Sequence[dict], picks: Sequence[Pick]) -> list[dict]:
    """ShareGPT records of the picked answers of scored rows ({id, prompt, answers, scores})."""
    return [
        sharegpt_record(
            rows[r]["prompt"], rows[r]["answers"][j], prompt_id=rows[r]["id"], answer_index=j,
            score=rows[r]["scores"][j],
        )
        for r, j in picks
    ]  # fmt: skip


def kept_records(
    rows: Sequence[dict],
    k: int,
    threshold: float | None,
    selection: str = "top_k",
    m: int | None = None,
) -> list[dict]:
    """ShareGPT records of the answers the rule keeps."""
    return records(rows, pick(rows, selection, k, m, threshold))


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


def rule_stats(
    rows: Sequence[dict], k: int, m: int | None, threshold: float | None
) -> dict[str, dict]:
    """For the report: what each rule keeps of these rows (count, prompts, mean reward), the
    rule in force or not. `global_top_m` without `m` is shown at the count top_k kept (the
    same budget spent globally); `threshold` (every non-blank answer above it) when set."""
    top_k = pick_top_k(rows, k, threshold)
    rules = {"top_k": {"k": k, "picks": top_k}}
    budget = m if m is not None else len(top_k)
    rules["global_top_m"] = {"m": budget, "picks": pick_global_top_m(rows, budget, threshold)}
    if threshold is not None:
        above = [(r, j) for _, _, r, j in _eligible(rows, threshold)]
        rules["threshold"] = {"threshold": threshold, "picks": above}
    out = {}
    for name, rule in rules.items():
        picks = rule.pop("picks")
        scores = [rows[r]["scores"][j] for r, j in picks]
        out[name] = {
            **rule,
            "kept": len(picks),
            "prompts_with_kept": len({rows[r]["id"] for r, _ in picks}),
            "mean_reward": statistics.fmean(scores) if scores else None,
        }
    return out
