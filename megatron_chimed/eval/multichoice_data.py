"""Readers for the multi-choice benchmarks: C-Eval CSV, CMMLU CSV, MedQA (MCMLE) JSON Lines.

Layouts (docs/data_formats.md §ceval, §cmmlu, §medqa):
- C-Eval ``{split}/{subject}_{split}.csv``; dev has ``explanation``, val lacks it, test lacks
  ``answer`` too (labels not public: such rows carry ``answer=""``).
- CMMLU ``{split}/{subject}.csv`` with an unnamed first index column (header ``,Question,...``).
- MedQA ``{split}.jsonl``: ``options`` is a dict letter -> text, the gold letter is ``answer_idx``.
- Your own ``jsonl`` (format ``jsonl``): field names set in the config; options a list, a dict
  letter -> text, or one field per letter; the answer a letter or a 0-based index.
"""

from __future__ import annotations

import csv
import string
from dataclasses import dataclass
from pathlib import Path

from megatron_chimed.data.jsonio import not_utf8

from .errors import DataFormatError, jsonl_records, read_json_objects, required

# Chinese subject names used inside the official prompts (C-Eval subject_mapping, CMMLU).
SUBJECT_NAMES_ZH = {
    "basic_medicine": "基础医学",
    "clinical_medicine": "临床医学",
    "anatomy": "解剖学",
    "clinical_knowledge": "临床知识",
    "college_medicine": "大学医学",
    "genetics": "遗传学",
    "nutrition": "营养学",
    "traditional_chinese_medicine": "中医中药",
    "virology": "病毒学",
}

FOUR_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class MCQuestion:
    subject: str
    qid: str
    question: str
    options: dict[str, str]  # letter -> option text, in letter order
    answer: str  # gold letter, "" when the split has no public labels


def _require(row: dict[str, str | None], field: str, where: str) -> str:
    value = row.get(field)
    if value is None:
        raise DataFormatError(f"{where}: missing field {field!r}")
    return value


def _check_answer(answer: str, letters: tuple[str, ...], where: str, field: str) -> str:
    answer = answer.strip()
    if answer and answer not in letters:
        raise DataFormatError(f"{where}: field {field!r} is {answer!r}, not one of {letters}")
    return answer


def read_ceval_csv(path: Path, subject: str) -> list[MCQuestion]:
    """One C-Eval subject file, any split (answer may be absent: test split)."""
    return _read_csv(path, subject, id_field="id", question_field="question", answer_field="answer")


def read_cmmlu_csv(path: Path, subject: str) -> list[MCQuestion]:
    """One CMMLU subject file; the unnamed first column is the 0-based row id."""
    return _read_csv(path, subject, id_field="", question_field="Question", answer_field="Answer")


def _read_csv(
    path: Path, subject: str, id_field: str, question_field: str, answer_field: str
) -> list[MCQuestion]:
    questions: list[MCQuestion] = []
    # surrogateescape: invalid UTF-8 is reported below with its row and field, not as a
    # decoder error at an offset into the decoder's buffer.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if err := not_utf8(f"{path}: header", ",".join(header)):
            raise DataFormatError(str(err))
        missing = [f for f in (id_field, question_field, *FOUR_LETTERS) if f not in header]
        if missing:
            raise DataFormatError(f"{path}: header {header} lacks column(s) {missing}")
        first_line = 2
        for row_number, row in enumerate(reader, start=1):
            # Explanations span several physical lines, so report where the record starts.
            where = f"{path}: row {row_number} (line {first_line})"
            first_line = reader.line_num + 1
            _check_utf8(where, row)
            answer = _check_answer(row.get(answer_field) or "", FOUR_LETTERS, where, answer_field)
            questions.append(
                MCQuestion(
                    subject=subject,
                    qid=_require(row, id_field, where),
                    question=_require(row, question_field, where),
                    options={k: _require(row, k, where) for k in FOUR_LETTERS},
                    answer=answer,
                )
            )
    return questions


def _check_utf8(where: str, row: dict[str, str | None]) -> None:
    """A DataFormatError naming the field of `row` that holds invalid UTF-8 (decoded with
    `surrogateescape`), if any."""
    for name, value in row.items():
        if isinstance(value, str) and (err := not_utf8(f"{where}: field {name!r}", value)):
            raise DataFormatError(str(err))


def read_medqa_jsonl(path: Path, subject: str = "mcmle") -> list[MCQuestion]:
    """MedQA Mainland JSON Lines (5 options A-E, or 4 in the ``4_options`` variant)."""
    questions: list[MCQuestion] = []
    for line_number, where, record in read_json_objects(path):
        options = record.get("options")
        if not isinstance(options, dict) or not options:
            raise DataFormatError(f"{where}: field 'options' must be a letter->text dict")
        letters = tuple(sorted(options))
        question = record.get("question")
        if not isinstance(question, str):
            raise DataFormatError(f"{where}: field 'question' must be a string")
        answer = _check_answer(str(record.get("answer_idx", "")), letters, where, "answer_idx")
        questions.append(
            MCQuestion(
                subject=subject,
                qid=str(record.get("id", line_number)),
                question=question,
                options={k: str(options[k]) for k in letters},
                answer=answer,
            )
        )
    return questions


def read_mc_jsonl(
    path: Path,
    question_field: str = "question",
    options_field: str | None = "options",
    answer_field: str = "answer",
    subject: str = "own",
) -> list[MCQuestion]:
    """A user's own multiple-choice JSON Lines file; every line needs its answer (these are
    scored questions or shots). `options_field=None` reads one field per letter: A, B, ..."""
    questions: list[MCQuestion] = []
    for where, record in jsonl_records(path):
        question = required(record, question_field, where, "question_field")
        if not isinstance(question, str) or not question.strip():
            raise DataFormatError(f"{where}: field {question_field!r}: expected a non-empty string")
        options = _own_options(record, options_field, where)
        letters = tuple(options)
        raw = required(record, answer_field, where, "answer_field")
        # bool is an int to Python, but `true` is no answer.
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(letters):
            answer = letters[raw]
        elif isinstance(raw, str) and raw.strip() in letters:
            answer = raw.strip()
        else:
            raise DataFormatError(
                f"{where}: field {answer_field!r}: {raw!r} is neither a letter of {letters} "
                f"nor a 0-based index below {len(letters)}"
            )
        qid = str(record.get("id", where.rsplit(":", 1)[-1]))
        questions.append(MCQuestion(subject, qid, question, options, answer))
    return questions


def _own_options(record: dict, options_field: str | None, where: str) -> dict[str, str]:
    """letter -> text from a list, a letter-keyed dict, or (no options field) fields A, B, ..."""
    if options_field is None:
        letters = list(string.ascii_uppercase)
        count = next((i for i, letter in enumerate(letters) if letter not in record), 26)
        options = {letter: record[letter] for letter in letters[:count]}
        if count < 2:
            raise DataFormatError(
                f"{where}: field {letters[count]!r}: missing (options_field "
                "is null, so each option is a field A, B, ...)"
            )
    else:
        value = required(record, options_field, where, "options_field")
        if isinstance(value, list):
            options = dict(zip(string.ascii_uppercase, value))
            if len(value) > 26:
                raise DataFormatError(f"{where}: field {options_field!r}: more than 26 options")
        elif isinstance(value, dict):
            options = {str(k).strip(): value[k] for k in sorted(value)}
            if list(options) != list(string.ascii_uppercase[: len(options)]):
                raise DataFormatError(
                    f"{where}: field {options_field!r}: keys {list(options)} are not A, B, ..."
                )
        else:
            raise DataFormatError(
                f"{where}: field {options_field!r}: expected a list or a letter->text object, "
                f"got {type(value).__name__}"
            )
        if len(options) < 2:
            raise DataFormatError(f"{where}: field {options_field!r}: needs at least 2 options")
    for letter, text in options.items():
        if not isinstance(text, str | int | float) or isinstance(text, bool):
            raise DataFormatError(f"{where}: option {letter}: expected text, got {text!r}")
    return {letter: str(text) for letter, text in options.items()}


def subject_file(data_format: str, data_dir: Path, subject: str, split: str) -> Path:
    """Where a subject's split lives in each benchmark's own layout."""
    if data_format == "ceval":
        return data_dir / split / f"{subject}_{split}.csv"
    if data_format == "cmmlu":
        return data_dir / split / f"{subject}.csv"
    if data_format == "medqa":
        return data_dir / f"{split}.jsonl"
    raise ValueError(f"unknown multi-choice format {data_format!r} (ceval, cmmlu, medqa)")


def load_split(data_format: str, data_dir: Path, subject: str, split: str) -> list[MCQuestion]:
    path = subject_file(data_format, Path(data_dir), subject, split)
    if not path.is_file():
        raise FileNotFoundError(f"{data_format} {subject} {split}: no file {path}")
    if data_format == "ceval":
        return read_ceval_csv(path, subject)
    if data_format == "cmmlu":
        return read_cmmlu_csv(path, subject)
    return read_medqa_jsonl(path, subject)
