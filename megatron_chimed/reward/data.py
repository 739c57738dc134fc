"""Read ranked preference data: a prompt and K >= 2 responses, best first.

Two on-disk forms (JSON Lines, one record a line):

* named fields with a configured rank order, e.g. CMD (Reward) `question, response_chosen,
  response_rejected`, or the paper's augmentation with `rank_order: [response_chosen,
  response_gpt4, response_gpt35, response_rejected]`;
* an ordered list, `responses_field: responses` with `{"question": ..., "responses": [best, ...,
  worst]}`.

A record whose prompt or one of its responses is missing or empty is either an error naming file,
line and field (`on_missing: error`, the default) or skipped and counted (`on_missing: skip`).
Likewise a record with the same response twice (chosen == rejected, a repeated answer in a
ranked list; compared without surrounding whitespace): such a pair says neither answer is better
and only adds noise to the loss and the accuracy (`on_duplicate: error | skip`). A rank order
naming a field twice, or the prompt field, is a config error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from megatron_chimed.data.jsonio import DataError, iter_jsonl

log = logging.getLogger(__name__)

ON_MISSING = ("error", "skip")
ON_DUPLICATE = ON_MISSING


@dataclass(frozen=True)
class RankedRecord:
    """One prompt with its responses ordered best first; `where` (file:line) and `names` (each
    response's field) only serve error messages."""

    prompt: str
    responses: tuple[str, ...]
    where: str = field(default="", compare=False)
    names: tuple[str, ...] = field(default=(), compare=False)

    def name(self, rank: int) -> str:
        """The field the response of this rank came from, for messages."""
        return self.names[rank] if rank < len(self.names) else f"responses[{rank}]"


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
    on_duplicate: str = "error"  # error | skip: a record with the same response twice
    template: str = "ziya"  # megatron_chimed/data/template.py
    instruction: str | None = None  # put before the question, as SFT did (or not)

    def __post_init__(self) -> None:
        if self.on_missing not in ON_MISSING:
            raise ValueError(f"data.on_missing={self.on_missing!r}: expected one of {ON_MISSING}")
        if self.on_duplicate not in ON_DUPLICATE:
            raise ValueError(
                f"data.on_duplicate={self.on_duplicate!r}: expected one of {ON_DUPLICATE}"
            )
        if self.responses_field is not None:
            return
        order = list(self.rank_order)
        if len(order) < 2:
            raise ValueError(f"data.rank_order={order}: needs at least 2 fields")
        for name in order:
            if order.count(name) > 1:
                raise ValueError(f"data.rank_order={order}: field {name!r} is named twice")
        if self.prompt_field in order:
            prompt = self.prompt_field
            raise ValueError(f"data.rank_order={order}: {prompt!r} is the prompt_field")


class MissingResponse(DataError):
    """A record lacks its prompt or one of its responses (skippable by config)."""


class DuplicateResponse(DataError):
    """A record has the same response twice (skippable by config)."""


def check_distinct(record: RankedRecord) -> None:
    """DuplicateResponse naming the record and the second field of the first repeated response
    (texts compared without surrounding whitespace)."""
    seen: dict[str, int] = {}
    for rank, text in enumerate(record.responses):
        first = seen.setdefault(text.strip(), rank)
        if first != rank:
            problem = (
                f"the same response as {record.name(first)!r}: a pair of equals teaches nothing"
            )
            raise DuplicateResponse(record.where or "reward record", record.name(rank), problem)


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
        names = tuple(cfg.rank_order)
        responses = tuple(_text(obj.get(n), n, where) for n in names)
    else:
        name = cfg.responses_field
        listed = obj.get(name)
        if not isinstance(listed, list) or len(listed) < 2:
            raise MissingResponse(where, name, f"expected a list of >= 2 responses, got {listed!r}")
        names = tuple(f"{name}[{i}]" for i in range(len(listed)))
        responses = tuple(_text(item, n, where) for item, n in zip(listed, names))
    record = RankedRecord(prompt, responses, where, names)
    check_distinct(record)
    return record


def read_ranked_jsonl(path: str | Path, cfg: RewardDataConfig) -> tuple[list[RankedRecord], int]:
    """All records of a JSON Lines file and the number skipped (missing or empty responses with
    `on_missing: skip`, repeated responses with `on_duplicate: skip`; each kind is logged)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: reward data file not found")
    records: list[RankedRecord] = []
    missing = duplicate = 0
    for where, obj in iter_jsonl(path):
        try:
            records.append(parse_record(obj, cfg, where))
        except MissingResponse:
            if cfg.on_missing == "error":
                raise
            missing += 1
        except DuplicateResponse:
            if cfg.on_duplicate == "error":
                raise
            duplicate += 1
    if missing:
        log.warning("%s: skipped %d record(s) with a missing or empty response", path, missing)
    if duplicate:
        log.warning("%s: skipped %d record(s) with the same response twice", path, duplicate)
    if not records:
        raise DataError(str(path), None, "no usable records")
    return records, missing + duplicate
