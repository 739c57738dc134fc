"""One reader per SFT data format (docs/data_formats.md §SFT), registered by name in `READERS`.

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

from megatron_chimed.data.jsonio import (
    DataError,
    field,
    iter_json_array,
    iter_jsonl,
    iter_lines,
    read_text,
)
from megatron_chimed.data.sft.encode import EncodeStats
from megatron_chimed.data.template import ASSISTANT, USER

Record = dict
# (path, source name, stats or None) -> records; `stats` receives the reader's drop counts.
Reader = Callable[..., Iterator[Record]]

# Turns a dialogue cannot train on, counted per source next to the encoder's drops.
EMPTY_TURN = "dropped_empty_turn"
LEADING_ASSISTANT_TURN = "dropped_leading_assistant_turn"
TRAILING_USER_TURN = "dropped_trailing_user_turn"

# Consecutive utterances of one speaker become one message (as HF's MedDialog parser merges
# them); a newline keeps the two utterances apart in the text the model sees.
MERGE_SEPARATOR = "\n"


def qa_record(prompt: str, response: str, source: str) -> Record:
    return {
        "messages": [{"role": USER, "content": prompt}, {"role": ASSISTANT, "content": response}],
        "source": source,
    }


def dialogue_records(
    turns: list[tuple[str, str]], source: str, stats: EncodeStats | None = None
) -> Iterator[Record]:
    """`(role, text)` turns -> one record per assistant turn, with all turns before it. Turns
    that end up in no record are counted in `stats`, one per original turn."""
    messages: list[dict] = []
    trailing_user = 0  # original turns merged into the current last user message
    for role, text in turns:
        text = text.strip()
        if not text:
            _count(stats, source, EMPTY_TURN)
            continue
        if not messages and role == ASSISTANT:  # a dialogue starts with the user
            _count(stats, source, LEADING_ASSISTANT_TURN)
            continue
        trailing_user = trailing_user + 1 if role == USER else 0
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += MERGE_SEPARATOR + text
        else:
            messages.append({"role": role, "content": text})
    if trailing_user:  # a question nobody answered: no response to train on
        _count(stats, source, TRAILING_USER_TURN, trailing_user)
    for k, message in enumerate(messages):
        if message["role"] == ASSISTANT:
            yield {"messages": messages[: k + 1], "source": source}


def _count(stats: EncodeStats | None, source: str, event: str, count: int = 1) -> None:
    if stats is not None:
        stats.add(source, event, count)


def read_cmd_finetune(
    path: Path, source: str, stats: EncodeStats | None = None
) -> Iterator[Record]:
    """CMD finetune: JSON Lines `instruction`, `input`, `output`; the prompt joins instruction
    and input with a blank line, as MedicalGPT's alpaca -> sharegpt conversion does."""
    for where, row in iter_jsonl(path):
        prompt = field(row, "instruction", where)
        extra = field(row, "input", where)
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        yield qa_record(prompt, field(row, "output", where), source)


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


SHAREGPT_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT}


def read_sharegpt(path: Path, source: str, stats: EncodeStats | None = None) -> Iterator[Record]:
    """ShareGPT JSON Lines `{"conversations": [{"from": human|gpt, "value"}]}`."""
    for where, row in iter_jsonl(path):
        turns = []
        for i, turn in enumerate(field(row, "conversations", where, list)):
            at = f"{where} conversations[{i}]"
            speaker = field(turn, "from", at)
            if speaker not in SHAREGPT_ROLES:
                raise DataError(at, "from", f"{speaker!r}: expected one of {list(SHAREGPT_ROLES)}")
            turns.append((SHAREGPT_ROLES[speaker], field(turn, "value", at)))
        yield from dialogue_records(turns, source, stats)


READERS: dict[str, Reader] = {
    "cmd_finetune": read_cmd_finetune,
    "chimed": read_chimed,
    "mc": read_mc,
    "meddialog_raw": read_meddialog_raw,
    "meddialog_processed": read_meddialog_processed,
    "safety_prompts": read_safety_prompts,
    "sharegpt": read_sharegpt,
}


def get_reader(name: str) -> Reader:
    """The reader registered as `name`: `reader(path, source, stats=None)` -> records."""
    if name not in READERS:
        raise ValueError(f"SFT reader {name!r}: expected one of {sorted(READERS)}")
    return READERS[name]
