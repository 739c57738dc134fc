"""Zero-shot generation tasks scored with BLEU/ROUGE: ChiMed open QA and MC next utterance.

ChiMed has no published on-disk format; we read our normalised schema, JSON Lines with
``question`` plus ``answers`` with ``recommended``/``adopted`` flags (docs/data_formats.md §chimed).
MC is read in its crawler layout, ``content`` = list of ``{speaker, utterance}``, speaker ``患者``
or not (docs/data_formats.md §mc).
Your own QA file (kind ``qa_jsonl``) is JSON Lines with a question and an answer field, named in
the config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_chimed.config.eval import TextGenerationConfig
from megatron_chimed.config.load import eval_task

from .errors import DataFormatError, expect_object, jsonl_records, read_text, required
from .model_api import EvalModel
from .text_metrics import TOKENISATION, text_scores

QA_INSTRUCTION = "假设你是一名医生，请回答患者的问题。"  # the paper's SFT prompt (Table 3)
DIALOGUE_INSTRUCTION = "假设你是一名医生，请根据以下医患对话历史，给出医生的下一句回复。"


@dataclass(frozen=True)
class GenerationItem:
    item_id: str
    prompt_body: str
    reference: str


def read_json_records(path: Path) -> list[tuple[int, dict]]:
    """A JSON array or JSON Lines file as (line-or-index, record) pairs, each record a JSON
    object; BOM tolerated."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}: line {err.lineno}: not JSON ({err.msg})") from None
        return [
            (index, expect_object(record, f"{path}: element {index} of the array"))
            for index, record in enumerate(records, start=1)
        ]
    pairs = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            where = f"{path}: line {line_number}"
            try:
                pairs.append((line_number, expect_object(json.loads(line), where)))
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{where}: not valid JSON ({err.msg})") from None
    return pairs


def choose_reference(answers: list[dict]) -> str | None:
    """The site-recommended answer, else the asker-adopted one, else None."""
    for flag in ("recommended", "adopted"):
        for answer in answers:
            if answer.get(flag) and str(answer.get("text", "")).strip():
                return str(answer["text"]).strip()
    return None


def read_chimed_qa(path: Path) -> tuple[list[GenerationItem], int]:
    """QA items and how many records were skipped for having no recommended/adopted answer."""
    items, skipped = [], 0
    for where, record in read_json_records(path):
        question = record.get("question") or record.get("title")
        answers = record.get("answers")
        if not isinstance(question, str) or not isinstance(answers, list):
            raise DataFormatError(f"{path}: line {where}: need str 'question', list 'answers'")
        reference = choose_reference(answers)
        if reference is None:
            skipped += 1
            continue
        items.append(GenerationItem(str(record.get("id", where)), question.strip(), reference))
    return items, skipped


def read_qa_jsonl(
    path: Path, question_field: str = "question", answer_field: str = "answer"
) -> list[GenerationItem]:
    """A user's own question/answer JSON Lines file; the answer is the reference."""
    items = []
    for where, record in jsonl_records(path):
        texts = []
        for name, key in ((question_field, "question_field"), (answer_field, "answer_field")):
            value = required(record, name, where, key)
            # An empty reference would score every output 0 and hide the broken line.
            if not isinstance(value, str) or not value.strip():
                raise DataFormatError(f"{where}: field {name!r}: expected a non-empty string")
            texts.append(value.strip())
        line = where.rsplit(":", 1)[-1]
        items.append(GenerationItem(str(record.get("id", line)), texts[0], texts[1]))
    return items


def speaker_tag(speaker: str) -> str:
    # The crawler writes 患者 for the patient and treats every other speaker as the doctor;
    # stray whitespace must not turn the patient into the doctor.
    return "P" if speaker.strip() in ("患者", "P", "patient") else "D"


def read_mc_dialogues(path: Path, turns: str = "last") -> list[GenerationItem]:
    """One item per doctor utterance that answers a patient turn (``all``), or only the last
    such utterance of each dialogue (``last``); history lines are ``P: ...`` / ``D: ...``."""
    if turns not in ("last", "all"):
        raise ValueError(f"MC turns must be last or all, not {turns!r}")
    items: list[GenerationItem] = []
    for where, record in read_json_records(path):
        content = record.get("content")
        if not isinstance(content, list):
            raise DataFormatError(f"{path}: line {where}: field 'content' must be a list")
        lines = []
        for turn_index, turn in enumerate(content):
            if not isinstance(turn, dict) or "speaker" not in turn or "utterance" not in turn:
                field = f"content[{turn_index}]"
                raise DataFormatError(f"{path}: line {where}: {field} needs speaker, utterance")
            lines.append((speaker_tag(str(turn["speaker"])), str(turn["utterance"]).strip()))
        candidates = [
            GenerationItem(
                f"{record.get('id', where)}#{i}",
                "\n".join(f"{tag}: {text}" for tag, text in lines[:i]),
                text,
            )
            for i, (tag, text) in enumerate(lines)
            if i > 0 and tag == "D" and lines[i - 1][0] == "P" and text
        ]
        items.extend(candidates if turns == "all" else candidates[-1:])
    return items


def clean_generation(text: str) -> str:
    """Keep only the model's own turn: drop anything after it starts a new ``P:`` line."""
    text = text.strip()
    for stop in ("\nP:", "\nP：", "\nD:", "\nD："):
        text = text.split(stop)[0]
    return text.strip()


class TextGenerationTask:
    """Config: config/eval.py TextGenerationConfig (a dict or DictConfig is typed as one)."""

    deterministic = False

    def __init__(self, cfg: TextGenerationConfig | Any) -> None:
        cfg = eval_task(cfg, kind="text_generation")
        self.kind = cfg.kind
        self.skipped = 0
        if self.kind == "chimed_qa":
            items, self.skipped = read_chimed_qa(Path(cfg.data_file))
            default = QA_INSTRUCTION
        elif self.kind == "qa_jsonl":
            items = read_qa_jsonl(Path(cfg.data_file), cfg.question_field, cfg.answer_field)
            default = QA_INSTRUCTION
        else:  # mc_dialogue: the config allows no other kind
            items = read_mc_dialogues(Path(cfg.data_file), cfg.turns)
            default = DIALOGUE_INSTRUCTION
        # "" asks for the bare question (a model tuned on another prompt); None for the default.
        instruction = default if cfg.instruction is None else cfg.instruction
        if cfg.limit:
            items = items[: cfg.limit]
        if not items:
            raise ValueError(f"{cfg.data_file}: no evaluation items")
        self.items = items
        prefix = f"{instruction}\n\n" if instruction else ""
        self.prompts = [prefix + item.prompt_body for item in items]
        self.max_new_tokens = cfg.max_new_tokens
        self.bleu_level = cfg.bleu_level

    def meta(self) -> dict[str, Any]:
        return {
            "items": len(self.items),
            "skipped_no_reference": self.skipped,
            "tokenisation": TOKENISATION,
            "bleu_level": self.bleu_level,
        }

    def run(self, model: EvalModel, seed: int) -> dict[str, Any]:
        generated = model.generate(self.prompts, self.max_new_tokens, seed)
        outputs = [clean_generation(text) for text in generated]
        references = [item.reference for item in self.items]
        records = [
            {"id": item.item_id, "prompt": p, "output": o, "reference": item.reference, "raw": g}
            for item, p, o, g in zip(self.items, self.prompts, outputs, generated)
        ]
        return {
            "metrics": text_scores(outputs, references, self.bleu_level),
            "counts": {"items": len(self.items), "empty_outputs": sum(not o for o in outputs)},
            "samples": [
                {"prompt": p, "output": o, "reference": r}
                for p, o, r in list(zip(self.prompts, outputs, references))[:2]
            ],
            "predictions": records,  # "raw": the generation before clean_generation cut it
        }
