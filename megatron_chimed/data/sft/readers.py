"""The paper's SFT data sets as reader presets (docs/data_formats.md §SFT), registered by name
in `READERS`; `read_source` reads a configured source, preset or generic format (sft/formats.py).

Every reader turns its file into records `{"messages": [{"role", "content"}], "source"}` whose
last message is the response to train on. QA data gives one record per question; a dialogue
gives one record per doctor turn, the history before it being the prompt (paper section 2.2).
Empty responses are kept here so that the encoder can drop and count them in one place; the
turns a dialogue reader cannot use (empty, a doctor turn before the first patient turn, patient
turns after the last doctor turn) are counted in the `stats` a reader is given, the same
per-source report the encoder writes its drops to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from megatron_chimed.data.jsonio import (
    DataError,
    field,
    iter_json_array,
    iter_jsonl,
    iter_lines,
    read_text,
)
from megatron_chimed.data.sft.encode import EncodeStats
from megatron_chimed.data.sft.formats import (
    FORMAT_READERS,
    Record,
    dialogue_records,
    qa_record,
    read_alpaca,
    read_sharegpt,
)
from megatron_chimed.data.template import ASSISTANT, USER

# (path, source name, stats or None) -> records; `stats` receives the reader's drop counts.
Reader = Callable[..., Iterator[Record]]


class SourceLike(Protocol):
    """What `read_source` needs of a source config (sft/config.py SourceConfig)."""

    name: str
    path: str
    reader: str | None
    format: str | None
    file_type: str | None
    columns: dict[str, str | None]
    roles: dict[str, str]


def read_cmd_finetune(
    path: Path, source: str, stats: EncodeStats | None = None
) -> Iterator[Record]:
    """CMD finetune: the alpaca format (`instruction`, `input`, `output`), JSON Lines or a JSON
    array; the prompt joins instruction and input with a blank line."""
    return read_alpaca(path, source, stats)


def read_chimed(path: Path, source: str, stats: EncodeStats | None = None) -> Iterator[Record]:
    """ChiMed (our normalised schema): one record per question (the paper counts 200,744 QA
    pairs = pages), answered by the asker's adopted answer, else the site's recommended one,
    else the first."""
    for where, row in iter_jsonl(path):
        question = field(row, "question", where)
        answers = field(row, "answers", where, list)
        if not answers:
            raise DataError(where, "answers", "empty list")
        for i, answer in enumerate(answers):
            field(answer, "text", f"{where} answers[{i}]")
        best = max(answers, key=lambda a: (bool(a.get("adopted")), bool(a.get("recommended"))))
        yield qa_record(question, best["text"], source)


# The crawler writes exactly these two; any other speaker (a nurse, a typo) is an error rather
# than a guess, because a guessed doctor turn is trained on as an answer.
MC_SPEAKERS = {"患者": USER, "医生": ASSISTANT}


def read_mc(path: Path, source: str, stats: EncodeStats | None = None) -> Iterator[Record]:
    """MC crawler output, JSON Lines; speaker `患者` is the patient, `医生` the doctor (either
    with stray whitespace); any other speaker is an error naming file, line and speaker."""
    for where, row in iter_jsonl(path):
        turns = []
        for i, utterance in enumerate(field(row, "content", where, list)):
            at = f"{where} content[{i}]"
            speaker = field(utterance, "speaker", at)
            role = MC_SPEAKERS.get(speaker.strip())
            if role is None:
                expected = list(MC_SPEAKERS)
                raise DataError(at, "speaker", f"{speaker!r}: expected one of {expected}")
            turns.append((role, field(utterance, "utterance", at)))
        yield from dialogue_records(turns, source, stats)


MEDDIALOG_SPEAKERS = {"病人": USER, "医生": ASSISTANT}
MEDDIALOG_ID = re.compile(r"^id\s*[=:]?\s*\d+")
MEDDIALOG_MARKER = re.compile(r"^(病人|医生)[：:]$")  # an older release used the ASCII colon


def read_meddialog_raw(
    path: Path, source: str, stats: EncodeStats | None = None
) -> Iterator[Record]:
    """MedDialog raw text: `id=` starts a dialogue; in its `Dialogue` block a `病人：`/`医生：`
    line announces the utterance on the next line; a blank line ends a block; other lines
    (description, faculty, diagnosis) are ignored."""
    turns: list[tuple[str, str]] | None = None
    in_dialogue, speaker = False, None
    for number, raw in iter_lines(path):
        line = raw.strip()
        if speaker is not None and line:  # checked first: an utterance may start with "id"
            turns.append((speaker, line))
            speaker = None
        elif MEDDIALOG_ID.match(line):
            if turns is not None:
                yield from dialogue_records(turns, source, stats)
            turns, in_dialogue, speaker = [], False, None
        elif turns is None:
            if line:
                raise DataError(f"{path}:{number}", "id", "text before the first id= line")
        elif not line:
            in_dialogue, speaker = False, None
        elif line == "Dialogue":
            in_dialogue = True
        elif in_dialogue and (marker := MEDDIALOG_MARKER.match(line)):
            speaker = MEDDIALOG_SPEAKERS[marker.group(1)]
    if turns is not None:
        yield from dialogue_records(turns, source, stats)


def read_meddialog_processed(
    path: Path, source: str, stats: EncodeStats | None = None
) -> Iterator[Record]:
    """MedDialog processed split: one JSON array (streamed) of dialogues, each a list of
    `病人：…` / `医生：…` strings; the 3-character prefix names the speaker."""
    for where, dialogue in iter_json_array(path):
        if not isinstance(dialogue, list):
            raise DataError(where, None, f"expected a list of utterances, got {dialogue!r:.60}")
        turns = []
        for i, utterance in enumerate(dialogue):
            role = MEDDIALOG_SPEAKERS.get(utterance[:2]) if isinstance(utterance, str) else None
            if role is None:
                raise DataError(
                    f"{where}[{i}]", None, f"expected '病人：…' or '医生：…', got {utterance!r:.40}"
                )
            turns.append((role, utterance[3:]))
        yield from dialogue_records(turns, source, stats)


def read_safety_prompts(
    path: Path, source: str, stats: EncodeStats | None = None
) -> Iterator[Record]:
    """Safety-Prompts: one JSON object {scenario: [{prompt, response, type}]}; responses often
    start with stray newlines (ChatGPT output), stripped here."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}", None, f"not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise DataError(str(path), None, "expected one JSON object keyed by scenario")
    for scenario, items in data.items():
        if not isinstance(items, list):
            raise DataError(f"{path}[{scenario!r}]", None, "expected a list of items")
        for i, item in enumerate(items):
            where = f"{path}[{scenario!r}][{i}]"
            response = field(item, "response", where).lstrip()
            yield qa_record(field(item, "prompt", where), response, source)


def read_sharegpt_preset(
    path: Path, source: str, stats: EncodeStats | None = None
) -> Iterator[Record]:
    """ShareGPT `{"conversations": [{"from": human|gpt|system, "value"}]}` (or role/content),
    JSON Lines or a JSON array: the generic `sharegpt` format with its default columns."""
    return read_sharegpt(path, source, stats)


READERS: dict[str, Reader] = {
    "cmd_finetune": read_cmd_finetune,
    "chimed": read_chimed,
    "mc": read_mc,
    "meddialog_raw": read_meddialog_raw,
    "meddialog_processed": read_meddialog_processed,
    "safety_prompts": read_safety_prompts,
    "sharegpt": read_sharegpt_preset,
}


def get_reader(name: str) -> Reader:
    """The reader registered as `name`: `reader(path, source, stats=None)` -> records."""
    if name not in READERS:
        raise ValueError(f"SFT reader {name!r}: expected one of {sorted(READERS)}")
    return READERS[name]


def read_source(source: SourceLike, stats: EncodeStats | None = None) -> Iterator[Record]:
    """The records of one configured source (sft/config.py SourceConfig): its generic `format`
    with its `columns`, `file_type` and `roles`, else its preset `reader`."""
    path = Path(source.path)
    if source.format is None:
        return get_reader(source.reader)(path, source.name, stats)
    kwargs = {"columns": source.columns, "file_type": source.file_type}
    if source.format == "sharegpt":
        kwargs["roles"] = source.roles
    return FORMAT_READERS[source.format](path, source.name, stats, **kwargs)
