"""Zero-shot generation tasks scored with BLEU/ROUGE: ChiMed open QA and MC next utterance.

ChiMed has no published on-disk format; we read our normalised schema, JSON Lines with
``question`` plus ``answers`` with ``recommended``/``adopted`` flags (docs/data_formats.md §chimed).
MC is read in its crawler layout, ``content`` = list of ``{speaker, utterance}``, speaker ``患者``
or not (docs/data_formats.md §mc).
Your own QA file (kind ``qa_jsonl``) is JSON Lines with a question and an answer field, named in
the config.

Protocol ``standard`` (the default): zero-shot, the kind's instruction before the question,
scored by text_metrics.py (sacrebleu ``zh`` tokens, rouge-score). Protocol ``paper``: the
authors' released scripts' prompts, sampling and scoring (paper_protocol.py, paper_metrics.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_chimed.config.eval import TextGenerationConfig
from megatron_chimed.config.load import eval_task

from . import paper_protocol
from .errors import DataFormatError, expect_object, jsonl_records, read_text, required
from .model_api import EvalModel, with_sampling
from .paper_metrics import BLEU_WEIGHTS, paper_scores
from .text_metrics import TOKENISATION, text_scores

QA_INSTRUCTION = "假设你是一名医生，请回答患者的问题。"  # the paper's SFT prompt (Table 3)
DIALOGUE_INSTRUCTION = "假设你是一名医生，请根据以下医患对话历史，给出医生的下一句回复。"


@dataclass(frozen=True)
class GenerationItem:
    item_id: str
    prompt_body: str
    reference: str
    history: tuple[tuple[str, str], ...] = ()  # dialogues: (speaker P/D, utterance) turns


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
                tuple(lines[:i]),
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
        self.protocol = cfg.protocol
        self.skipped = 0
        items, default = self._read(cfg, Path(cfg.data_file))
        if cfg.limit:
            items = items[: cfg.limit]
        if not items:
            raise ValueError(f"{cfg.data_file}: no evaluation items")
        self.items = items
        self.roles = list(cfg.roles)
        self.shots = int(cfg.setting("shots"))
        if self.protocol == "paper":
            self.prompts = self._paper_prompts(cfg)
        else:
            # "" asks for the bare question (a model tuned on another prompt); None: default.
            instruction = default if cfg.instruction is None else cfg.instruction
            prefix = f"{instruction}\n\n" if instruction else ""
            self.prompts = [prefix + item.prompt_body for item in items]
        self.max_new_tokens = int(cfg.setting("max_new_tokens"))
        self.temperature = cfg.setting("temperature")
        self.top_p = cfg.setting("top_p")
        self.bleu_level = cfg.bleu_level

    def _read(self, cfg: TextGenerationConfig, path: Path) -> tuple[list[GenerationItem], str]:
        """The file's items in the kind's layout, and the kind's standard instruction."""
        if self.kind == "chimed_qa":
            items, self.skipped = read_chimed_qa(path)
            return items, QA_INSTRUCTION
        if self.kind == "qa_jsonl":
            return read_qa_jsonl(path, cfg.question_field, cfg.answer_field), QA_INSTRUCTION
        # mc_dialogue: the config allows no other kind
        return read_mc_dialogues(path, cfg.turns), DIALOGUE_INSTRUCTION

    def _paper_prompts(self, cfg: TextGenerationConfig) -> list[str]:
        if self.kind == "mc_dialogue":
            return [paper_protocol.dialogue_prompt(i.history, self.roles) for i in self.items]
        shots: list[tuple[str, str]] = []
        if self.shots:
            pool, _ = self._read(cfg, Path(str(cfg.shot_file)))
            if len(pool) < self.shots:
                raise ValueError(f"{cfg.shot_file}: {len(pool)} items < {self.shots} shots")
            shots = [(item.prompt_body, item.reference) for item in pool[: self.shots]]
        return [paper_protocol.qa_prompt(i.prompt_body, shots, self.roles) for i in self.items]

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "protocol": self.protocol,
            "items": len(self.items),
            "skipped_no_reference": self.skipped,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,  # null: the model's own decoding
            "top_p": self.top_p,
        }
        if self.protocol == "paper":
            meta.update(
                shots=self.shots,
                roles=self.roles,
                tokenisation="the script's chinese_char_tokenize, scored per character",
                bleu_weights={name: list(w) for name, w in BLEU_WEIGHTS.items()},
            )
        else:
            meta.update(tokenisation=TOKENISATION, bleu_level=self.bleu_level)
        return meta

    def run(self, model: EvalModel, seed: int) -> dict[str, Any]:
        sampler = with_sampling(model, self.temperature, self.top_p)
        generated = sampler.generate(self.prompts, self.max_new_tokens, seed)
        references = [item.reference for item in self.items]
        counts = {"items": len(self.items)}
        if self.protocol == "paper":
            outputs = [paper_protocol.extract_answer(text, self.roles) for text in generated]
            metrics, counts["rouge_refused"] = paper_scores(outputs, references)
        else:
            outputs = [clean_generation(text) for text in generated]
            metrics = text_scores(outputs, references, self.bleu_level)
        counts["empty_outputs"] = sum(not o.strip() for o in outputs)
        records = [
            {"id": item.item_id, "prompt": p, "output": o, "reference": item.reference, "raw": g}
            for item, p, o, g in zip(self.items, self.prompts, outputs, generated)
        ]
        return {
            "metrics": metrics,
            "counts": counts,
            "samples": [
                {"prompt": p, "output": o, "reference": r}
                for p, o, r in list(zip(self.prompts, outputs, references))[:2]
            ],
            "predictions": records,  # "raw": the generation before the answer was cut from it
        }
