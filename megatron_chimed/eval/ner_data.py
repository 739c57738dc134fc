"""NER readers: span JSON Lines (CCKS-2019 and a configurable ChiMST layout) and char/word BIO.

CCKS-2019 (docs/data_formats.md §ccks2019): JSON Lines, UTF-8 with a BOM (possibly one per
concatenated part), ``originalText`` + ``entities`` of ``{label_type, start_pos, end_pos}`` with
``end_pos`` exclusive. ChiMST's format is not public (docs/data_formats.md §chimst), so both of
its readers take the field names / columns from the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import DataFormatError, expect_object, read_json_objects, read_lines

CCKS_LABELS = ("疾病和诊断", "影像检查", "实验室检验", "手术", "药物", "解剖部位")


@dataclass(frozen=True)
class NERDoc:
    doc_id: str
    text: str
    entities: tuple[tuple[str, str], ...]  # (entity text, label), in order of appearance


def read_span_jsonl(
    path: Path,
    text_key: str = "text",
    entities_key: str = "entities",
    start_key: str = "start",
    end_key: str = "end",
    label_key: str = "label",
    end_inclusive: bool = False,
) -> list[NERDoc]:
    docs: list[NERDoc] = []
    for line_number, where, record in read_json_objects(path):
        text = record.get(text_key)
        spans = record.get(entities_key)
        if not isinstance(text, str):
            raise DataFormatError(f"{where}: field {text_key!r} must be a string")
        if not isinstance(spans, list):
            raise DataFormatError(f"{where}: field {entities_key!r} must be a list")
        entities = []
        for k, span in enumerate(spans):
            field = f"{entities_key}[{k}]"
            span = expect_object(span, f"{where}: {field}")
            start, end, label = span.get(start_key), span.get(end_key), span.get(label_key)
            if not isinstance(start, int) or not isinstance(end, int):
                raise DataFormatError(f"{where}: {field}: {start_key}/{end_key} not integers")
            end = end + 1 if end_inclusive else end
            if not 0 <= start < end <= len(text):
                raise DataFormatError(
                    f"{where}: {field}: span [{start}, {end}) outside text of {len(text)} chars"
                )
            if not isinstance(label, str) or not label:
                raise DataFormatError(f"{where}: {field}: {label_key!r} must be a string")
            entities.append((start, text[start:end], label))
        entities.sort(key=lambda e: e[0])
        doc_id = str(record.get("id", line_number))
        docs.append(NERDoc(doc_id, text, tuple((t, lab) for _, t, lab in entities)))
    return docs


def read_ccks2019(path: Path) -> list[NERDoc]:
    return read_span_jsonl(
        path,
        text_key="originalText",
        entities_key="entities",
        start_key="start_pos",
        end_key="end_pos",
        label_key="label_type",
    )


def read_bio(
    path: Path, token_column: int = 0, tag_column: int = -1, joiner: str = ""
) -> list[NERDoc]:
    """CoNLL-style BIO (BIOES tolerated): one token per line, blank line between sentences.

    An ``I-`` tag that does not continue an entity of the same label starts a new one (the
    conlleval convention), so a stray tag never silently merges two labels.
    """
    docs: list[NERDoc] = []
    tokens: list[str] = []
    entities: list[tuple[str, str]] = []
    current: list[str] = []
    current_label = ""

    def close_entity() -> None:
        nonlocal current, current_label
        if current:
            entities.append((joiner.join(current), current_label))
        current, current_label = [], ""

    def close_doc(line_number: int) -> None:
        nonlocal tokens, entities
        close_entity()
        if tokens:
            docs.append(NERDoc(f"{path.name}:{line_number}", joiner.join(tokens), tuple(entities)))
        tokens, entities = [], []

    line_number = 0
    for line_number, line in read_lines(path):
        columns = line.split()
        if not columns or columns[0].startswith("-DOCSTART-"):
            close_doc(line_number)
            continue
        try:
            token, tag = columns[token_column], columns[tag_column]
        except IndexError:
            where = f"{path}: line {line_number}"
            raise DataFormatError(f"{where}: missing token or tag column") from None
        tokens.append(token)
        if tag == "O":
            close_entity()
            continue
        prefix, _, label = tag.partition("-")
        if prefix not in ("B", "I", "E", "S") or not label:
            where = f"{path}: line {line_number}"
            raise DataFormatError(f"{where}: tag {tag!r} is not O or B-/I-/E-/S-")
        if prefix in ("B", "S") or label != current_label:
            close_entity()
        current.append(token)
        current_label = label
        if prefix in ("E", "S"):
            close_entity()
    close_doc(line_number)
    return docs


def read_ner_file(path: Path, reader: str, options: dict | None = None) -> list[NERDoc]:
    """Dispatch on the configured reader name: ccks2019, span_jsonl or bio."""
    options = dict(options or {})
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NER data file {path} does not exist")
    if reader == "ccks2019":
        return read_ccks2019(path)
    if reader == "span_jsonl":
        return read_span_jsonl(path, **options)
    if reader == "bio":
        return read_bio(path, **options)
    raise ValueError(f"unknown NER reader {reader!r} (ccks2019, span_jsonl, bio)")
