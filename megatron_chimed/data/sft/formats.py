"""Generic SFT formats for your own data: `alpaca`, `sharegpt` and `qa`, with a column mapping.

A source in conf/data/sft_*.yaml names its `format`, optionally its `file_type` (else the file's
suffix: data/records.py) and a `columns` mapping from the format's keys to the file's column
names, in the spirit of LLaMA-Factory's dataset_info.json (docs/data_formats.md §Your own data):

* alpaca: `instruction`, `input` (optional, joined to the instruction with a blank line),
  `output`, `system` and `history` (optional: a list of [prompt, response] pairs before it);
* sharegpt: `messages` (a list of turns, default column `conversations`) and `system`
  (optional). A turn is `{from, value}` or `{role, content}` (or the keys `columns.role` and
  `columns.content` name); `roles` maps its speaker names to user/assistant/system;
* qa: `prompt` and `response` (default columns `question`, `answer`), `system` (optional).
  `columns.response: null` reads prompts only (RS prompt files; SFT drops them, counted).

Every format yields records `{"messages": [{"role", "content"}], "source"}` (plus `"system"`,
a per-record system prompt that the encoder renders as the template's instruction) whose last
message is the response to train on, exactly as the paper's readers do (sft/readers.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from megatron_chimed.data.jsonio import DataError
from megatron_chimed.data.records import column, iter_records
from megatron_chimed.data.sft.encode import EncodeStats
from megatron_chimed.data.template import ASSISTANT, USER

Record = dict
SYSTEM = "system"

# Turns a dialogue cannot train on, counted per source next to the encoder's drops.
EMPTY_TURN = "dropped_empty_turn"
LEADING_ASSISTANT_TURN = "dropped_leading_assistant_turn"
TRAILING_USER_TURN = "dropped_trailing_user_turn"

# Consecutive utterances of one speaker become one message (as HF's MedDialog parser merges
# them); a newline keeps the two utterances apart in the text the model sees.
MERGE_SEPARATOR = "\n"

# Default column of each format key; a config's `columns` overrides some of them.
DEFAULT_COLUMNS: dict[str, dict[str, str | None]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output",
               "system": "system", "history": "history"},
    "sharegpt": {"messages": "conversations", "system": "system", "role": None, "content": None},
    "qa": {"prompt": "question", "response": "answer", "system": "system"},
}  # fmt: skip
FORMATS = tuple(DEFAULT_COLUMNS)
# Keys a record must have; the others may be absent (or null, or an empty CSV cell).
REQUIRED = {"alpaca": ("instruction", "output"), "sharegpt": ("messages",),
            "qa": ("prompt", "response")}  # fmt: skip
SHAREGPT_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT,
                  "system": SYSTEM}  # fmt: skip


def resolve_columns(fmt: str, columns: Mapping[str, str | None] | None, where: str) -> dict:
    """The format's default columns updated by `columns`; an unknown key is an error naming
    `where` (the config path), so that a typo is not silently ignored."""
    if fmt not in DEFAULT_COLUMNS:
        raise ValueError(f"{where}.format={fmt!r}: expected one of {FORMATS}")
    resolved = dict(DEFAULT_COLUMNS[fmt])
    for key, name in (columns or {}).items():
        if key not in resolved:
            raise ValueError(f"{where}.columns.{key}: not a {fmt} key; expected some of "
                             f"{sorted(resolved)}")  # fmt: skip
        if name is None and key in REQUIRED[fmt] and (fmt, key) != ("qa", "response"):
            raise ValueError(f"{where}.columns.{key}: required by format {fmt!r}, cannot be null")
        resolved[key] = name
    return resolved


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


def _with_system(record: Record, system: str | None) -> Record:
    if system and system.strip():
        record[SYSTEM] = system.strip()
    return record


def _text(row: object, cols: dict, key: str, where: str, required: bool = False) -> str | None:
    """The text in the column mapped to `key`, or None when the key is unmapped/absent."""
    name = cols[key]
    if name is None:
        return None
    return column(row, name, where, f"columns.{key}", str, required)


def read_alpaca(
    path: Path, source: str, stats: EncodeStats | None = None, columns: dict | None = None,
    file_type: str | None = None,
) -> Iterator[Record]:  # fmt: skip
    """Alpaca rows; the prompt joins instruction and input with a blank line, as MedicalGPT's
    alpaca -> sharegpt conversion does. `history` pairs come before it, as context."""
    cols = resolve_columns("alpaca", columns, "columns")
    for where, row in iter_records(path, file_type):
        prompt = _text(row, cols, "instruction", where, required=True)
        extra = _text(row, cols, "input", where)
        if extra and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        response = _text(row, cols, "output", where, required=True)
        messages = []
        history = column(row, cols["history"], where, "columns.history", list, False)
        for i, pair in enumerate(history or []):
            ok = isinstance(pair, list | tuple) and len(pair) == 2
            if not ok or not all(isinstance(t, str) for t in pair):
                problem = f"history[{i}]: expected a [prompt, response] pair of strings"
                raise DataError(where, cols["history"], problem)
            messages += [
                {"role": USER, "content": pair[0]},
                {"role": ASSISTANT, "content": pair[1]},
            ]
        record = qa_record(prompt, response, source)  # type: ignore[arg-type]
        record["messages"] = messages + record["messages"]
        yield _with_system(record, _text(row, cols, "system", where))


def read_qa(
    path: Path, source: str, stats: EncodeStats | None = None, columns: dict | None = None,
    file_type: str | None = None,
) -> Iterator[Record]:  # fmt: skip
    """One question and its answer a row; with `columns.response: null`, the question only."""
    cols = resolve_columns("qa", columns, "columns")
    for where, row in iter_records(path, file_type):
        prompt = _text(row, cols, "prompt", where, required=True)
        if cols["response"] is None:
            record = {"messages": [{"role": USER, "content": prompt}], "source": source}
        else:
            record = qa_record(prompt, _text(row, cols, "response", where, True), source)  # type: ignore[arg-type]
        yield _with_system(record, _text(row, cols, "system", where))


def read_sharegpt(
    path: Path, source: str, stats: EncodeStats | None = None, columns: dict | None = None,
    file_type: str | None = None, roles: Mapping[str, str] | None = None,
) -> Iterator[Record]:  # fmt: skip
    """ShareGPT conversations; leading `system` turns (or a `system` column) become the
    record's system prompt; a system turn after the dialogue started is an error."""
    cols = resolve_columns("sharegpt", columns, "columns")
    speakers = dict(roles) if roles else SHAREGPT_ROLES
    for name, role in speakers.items():
        if role not in (USER, ASSISTANT, SYSTEM):
            raise ValueError(f"roles.{name}={role!r}: expected user, assistant or system")
    for where, row in iter_records(path, file_type):
        system = _text(row, cols, "system", where)
        turns: list[tuple[str, str]] = []
        listed = column(row, cols["messages"], where, "columns.messages", list)
        for i, turn in enumerate(listed):
            at = f"{where} {cols['messages']}[{i}]"
            role_key = cols["role"] or ("from" if isinstance(turn, dict) and "from" in turn
                                        else "role")  # fmt: skip
            content_key = cols["content"] or ("value" if role_key == "from" else "content")
            speaker = column(turn, role_key, at, "columns.role")
            role = speakers.get(speaker)
            if role is None:
                problem = f"{speaker!r}: expected one of {list(speakers)} (or set roles)"
                raise DataError(at, role_key, problem)
            text = column(turn, content_key, at, "columns.content")
            if role == SYSTEM:
                if turns:
                    raise DataError(at, role_key, "a system turn after the dialogue started")
                system = f"{system}\n{text}" if system else text
                continue
            turns.append((role, text))
        for record in dialogue_records(turns, source, stats):
            yield _with_system(record, system)


FORMAT_READERS = {"alpaca": read_alpaca, "sharegpt": read_sharegpt, "qa": read_qa}
