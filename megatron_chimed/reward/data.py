"""Read ranked preference data: a prompt and K >= 2 responses, best first.

Two on-disk forms (JSON Lines, one record a line):

* named fields with a configured rank order, e.g. CMD (Reward) `question, response_chosen,
  response_rejected`, or the paper's augmentation with `rank_order: [response_chosen,
  response_gpt4, response_gpt35, response_rejected]`;
* an ordered list, `responses_field: responses` with `{"question": ..., "responses": [best, ...,
  worst]}`.

A record whose prompt or one of its responses is missing or empty is either an error naming file,
line and field (`on_missing: error`, the default) or skipped and counted (`on_missing: skip`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from megatron_chimed.data.jsonio import DataError, iter_jsonl

log = logging.getLogger(__name__)

ON_MISSING = ("error", "skip")


@dataclass(frozen=True)
class RankedRecord:
    """One prompt with its responses ordered best first."""

    prompt: str
    responses: tuple[str, ...]


@dataclass
class RewardDataConfig:
    """How to read and format one reward data set (`conf/data/reward_*.yaml`)."""

    train: str = ""
    valid: str = ""
    test: str = ""
    prompt_field: str = "question"
    # Named response fields, best first. Ignored when `responses_field` is set.
    rank_order: list[str] = field(default_factory=lambda: ["response_chosen", "response_rejected"])
    responses_field: str | None = None  # a list of responses, best first
    on_missing: str = "error"  # error | skip
    template: str = "ziya"  # megatron_chimed/data/template.py
    instruction: str | None = None  # put before the question, as SFT did (or not)

    def __post_init__(self) -> None:
        if self.on_missing not in ON_MISSING:
            raise ValueError(f"data.on_missing={self.on_missing!r}: expected one of {ON_MISSING}")
        if self.responses_field is None and len(self.rank_order) < 2:
            raise ValueError(f"data.rank_order={self.rank_order}: needs at least 2 fields")


class MissingResponse(DataError):
    """A record lacks its prompt or one of its responses (skippable by config)."""


def _text(value: object, name: str, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MissingResponse(where, name, "missing or empty")
    if not isinstance(value, str):
        raise DataError(where, name, f"expected str, got {type(value).__name__}")
    return value


def parse_record(obj: object, cfg: RewardDataConfig, where: str) -> RankedRecord:
    """One JSON object -> RankedRecord; errors name `where` (file:line) and the field."""
    if not isinstance(obj, dict):
        raise DataError(where, None, f"expected a JSON object, got {type(obj).__name__}")
    prompt = _text(obj.get(cfg.prompt_field), cfg.prompt_field, where)
    if cfg.responses_field is None:
        return RankedRecord(prompt, tuple(_text(obj.get(n), n, where) for n in cfg.rank_order))
    name = cfg.responses_field
    listed = obj.get(name)
    if not isinstance(listed, list) or len(listed) < 2:
        raise MissingResponse(where, name, f"expected a list of >= 2 responses, got {listed!r}")
    return RankedRecord(
        prompt, tuple(_text(item, f"{name}[{i}]", where) for i, item in enumerate(listed))
    )


def read_ranked_jsonl(path: str | Path, cfg: RewardDataConfig) -> tuple[list[RankedRecord], int]:
    """All records of a JSON Lines file and the number skipped for missing responses."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: reward data file not found")
    records: list[RankedRecord] = []
    skipped = 0
    for where, obj in iter_jsonl(path):
        try:
            records.append(parse_record(obj, cfg, where))
        except MissingResponse:
            if cfg.on_missing == "error":
                raise
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d record(s) with a missing or empty response", path, skipped)
    if not records:
        raise DataError(str(path), None, "no usable records")
    return records, skipped
