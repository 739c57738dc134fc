"""Readers for the multi-choice benchmarks: C-Eval CSV, CMMLU CSV, MedQA (MCMLE) JSON Lines.

Layouts (docs/data_formats.md §ceval, §cmmlu, §medqa):
- C-Eval ``{split}/{subject}_{split}.csv``; dev has ``explanation``, val lacks it, test lacks
  ``answer`` too (labels not public: such rows carry ``answer=""``).
- CMMLU ``{split}/{subject}.csv`` with an unnamed first index column (header ``,Question,...``).
- MedQA ``{split}.jsonl``: ``options`` is a dict letter -> text, the gold letter is ``answer_idx``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from megatron_chimed.data.jsonio import not_utf8

from .errors import DataFormatError, read_json_objects

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
