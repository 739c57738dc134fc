"""Read ranked preference data: a prompt and K >= 2 responses, best first.

Any file type data/records.py reads (JSON Lines, a JSON array, CSV, Parquet; by suffix or
`file_type`), in two forms:

* named fields with a configured rank order, e.g. CMD (Reward) `question, response_chosen,
  response_rejected`, or the paper's augmentation with `rank_order: [response_chosen,
  response_gpt4, response_gpt35, response_rejected]`;
* an ordered list, `responses_field: responses` with `{"question": ..., "responses": [best, ...,
  worst]}` (in a CSV cell, the list as JSON text).

`columns` maps the same things with the SFT formats' keys instead: `{prompt: q, chosen: good,
rejected: bad}`, `{prompt: q, ranked: [best, second, worst]}` or `{prompt: q, responses: list}`.

A record whose prompt or one of its responses is missing or empty is either an error naming file,
line and field (`on_missing: error`, the default) or skipped and counted (`on_missing: skip`).
Likewise a record with the same response twice (chosen == rejected, a repeated answer in a
ranked list; compared without surrounding whitespace): such a pair says neither answer is better
and only adds noise to the loss and the accuracy (`on_duplicate: error | skip`). A rank order
naming a field twice, or the prompt field, is a config error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_chimed.data.jsonio import DataError
from megatron_chimed.data.records import FILE_TYPES, iter_records

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
    test: str | None = None  # optional: without it the stage reports no test metrics
    prompt_field: str = "question"
    # Named response fields, best first. Ignored when `responses_field` is set.
    rank_order: list[str] = field(default_factory=lambda: ["response_chosen", "response_rejected"])
    responses_field: str | None = None  # a list of responses, best first
    on_missing: str = "error"  # error | skip
    on_duplicate: str = "error"  # error | skip: a record with the same response twice
    template: str = "ziya"  # megatron_chimed/data/template.py
    instruction: str | None = None  # put before the question, as SFT did (or not)
    file_type: str | None = None  # jsonl | json | csv | tsv | parquet; null: the suffix
    # Alternative spelling of the fields above: prompt, chosen + rejected, ranked, responses.
    columns: dict[str, Any] | None = None  # str, or a list for `ranked`; None: the fields above

    def __post_init__(self) -> None:
        if self.file_type is not None and self.file_type not in FILE_TYPES:
            raise ValueError(f"data.file_type={self.file_type!r}: expected one of {FILE_TYPES}")
        self._apply_columns()
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

    def _apply_columns(self) -> None:
        """`columns` -> prompt_field / rank_order / responses_field, so that one code path
        reads both spellings; the keys it was given are remembered for error messages."""
        cols = dict(self.columns or {})
        unknown = sorted(set(cols) - set(COLUMN_KEYS))
        if unknown:
            raise ValueError(f"data.columns: unknown key(s) {unknown}; expected some of "
                             f"{list(COLUMN_KEYS)}")  # fmt: skip
        if "prompt" in cols:
            self.prompt_field = str(cols["prompt"])
        forms = [k for k in ("ranked", "responses") if k in cols]
        pair = [k for k in ("chosen", "rejected") if k in cols]
        if len(forms) + bool(pair) > 1 or len(pair) == 1:
            raise ValueError("data.columns: give chosen + rejected, or ranked, or responses")
        if pair:
            self.rank_order = [str(cols["chosen"]), str(cols["rejected"])]
        elif "ranked" in cols:
            self.rank_order = [str(n) for n in cols["ranked"]]  # type: ignore[union-attr]
        elif "responses" in cols:
            self.responses_field = str(cols["responses"])

    def key_of(self, name: str) -> str:
        """The config key that names the column `name`, for error messages."""
        cols = self.columns or {}
        for key in ("prompt", "chosen", "rejected", "responses"):
            if cols.get(key) == name:
                return f"data.columns.{key}"
        if name in cols.get("ranked", []):
            return f"data.columns.ranked[{list(cols['ranked']).index(name)}]"
        if name == self.prompt_field:
            return "data.prompt_field"
        if name == self.responses_field:
            return "data.responses_field"
        return f"data.rank_order[{self.rank_order.index(name)}]"


COLUMN_KEYS = ("prompt", "chosen", "rejected", "ranked", "responses")


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


def _text(value: object, name: str, where: str, key: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MissingResponse(where, name, f"missing or empty (column set by {key})")
    if not isinstance(value, str):
        raise DataError(where, name, f"expected str, got {type(value).__name__}")
    return value


def parse_record(obj: object, cfg: RewardDataConfig, where: str) -> RankedRecord:
    """One JSON object -> RankedRecord; errors name `where` (file:line) and the field."""
    if not isinstance(obj, dict):
        raise DataError(where, None, f"expected a JSON object, got {type(obj).__name__}")
    prompt = _text(obj.get(cfg.prompt_field), cfg.prompt_field, where, cfg.key_of(cfg.prompt_field))
    if cfg.responses_field is None:
        names = tuple(cfg.rank_order)
        responses = tuple(_text(obj.get(n), n, where, cfg.key_of(n)) for n in names)
    else:
        name = cfg.responses_field
        listed = obj.get(name)
        if isinstance(listed, str) and listed.lstrip().startswith("["):
            try:  # a CSV cell holds the list as JSON text
                listed = json.loads(listed)
            except json.JSONDecodeError as err:
                raise DataError(where, name, f"not a JSON list ({err.msg})") from None
        if not isinstance(listed, list) or len(listed) < 2:
            raise MissingResponse(where, name, f"expected a list of >= 2 responses, got {listed!r}")
        names = tuple(f"{name}[{i}]" for i in range(len(listed)))
        key = cfg.key_of(name)
        responses = tuple(_text(item, n, where, key) for item, n in zip(listed, names))
    record = RankedRecord(prompt, responses, where, names)
    check_distinct(record)
    return record


def read_ranked_jsonl(path: str | Path, cfg: RewardDataConfig) -> tuple[list[RankedRecord], int]:
    """All records of a data file (any file type, despite the name) and the number skipped
    (missing or empty responses with `on_missing: skip`, repeated responses with
    `on_duplicate: skip`; each kind is logged)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: reward data file not found")
    records: list[RankedRecord] = []
    missing = duplicate = 0
    for where, obj in iter_records(path, cfg.file_type):
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
