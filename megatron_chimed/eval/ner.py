"""5-shot generative NER: prompt listing entities per label, tolerant answer parser, entity F1.

The model writes one ``类型：实体1；实体2`` line per label. Scoring is on exact (text, label)
pairs per document as sets: a generative answer names strings, not positions, so a mention
repeated in the text (or in the answer) counts once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from megatron_chimed.config.eval import NERConfig
from megatron_chimed.config.load import eval_task

from .model_api import EvalModel
from .ner_data import CCKS_LABELS, NERDoc, read_ner_file

NONE_WORDS = {"无", "没有", "暂无", "none", "None", "无实体", "-", "—", "N/A"}
_STRIP = " \t\"'“”‘’《》「」【】[]()（）。.`"


def build_ner_prompt(doc: NERDoc, shots: list[NERDoc], labels: list[str]) -> str:
    header = (
        f"请从以下医疗文本中抽取命名实体，实体类型包括：{'、'.join(labels)}。"
        "请按“类型：实体1；实体2”的格式每种类型写一行，没有该类型的实体时写“无”。\n\n"
    )
    examples = "".join(_format_doc(s, labels, with_answer=True) for s in shots)
    return header + examples + _format_doc(doc, labels, with_answer=False)


def _format_doc(doc: NERDoc, labels: list[str], with_answer: bool) -> str:
    text = f"文本：{doc.text}\n实体：\n"
    if not with_answer:
        return text
    lines = []
    for label in labels:
        names = list(dict.fromkeys(t for t, lab in doc.entities if lab == label))
        lines.append(f"{label}：{'；'.join(names) if names else '无'}")
    return text + "\n".join(lines) + "\n\n"


def _split_entities(value: str) -> list[str]:
    # Shots separate with "；"; only fall back to commas when the model used no semicolon,
    # because real entities may contain "、" or "，".
    value = value.strip()
    parts = re.split(r"[；;]", value) if re.search(r"[；;]", value) else re.split(r"[，,、]", value)
    names = [p.strip(_STRIP) for p in parts]
    return [n for n in names if n and n not in NONE_WORDS]


def _parse_json_answer(answer: str, labels: list[str]) -> set[tuple[str, str]] | None:
    match = re.search(r"\{.*\}", answer, flags=re.DOTALL)
    if not match:
        return None
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not any(label in obj for label in labels):
        return None
    found = set()
    for label in labels:
        value = obj.get(label)
        names = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        found |= {(n.strip(_STRIP), label) for n in names if isinstance(n, str)}
    return {(n, lab) for n, lab in found if n and n not in NONE_WORDS}


def parse_ner_answer(answer: str, labels: list[str]) -> tuple[set[tuple[str, str]], bool]:
    """(entities, parsed). Unparseable answers give no entities and ``parsed=False``."""
    # The model may go on to invent the next example: keep only its first answer.
    answer = re.split(r"\n\s*文本\s*[:：]", answer)[0]
    answer = re.sub(r"^\s*实体\s*[:：]", "", answer)
    from_json = _parse_json_answer(answer, labels)
    if from_json is not None:
        return from_json, True
    label_pattern = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    line_re = re.compile(
        rf"^\s*(?:[-*•]|\d+\s*[.、)）])?\s*[【\[“\"]?({label_pattern})[】\]”\"]?\s*[:：](.*)$"
    )
    found: set[tuple[str, str]] = set()
    parsed = False
    for line in answer.splitlines():
        match = line_re.match(line)
        if match:
            parsed = True
            found |= {(name, match.group(1)) for name in _split_entities(match.group(2))}
    if not parsed and answer.strip().strip(_STRIP) in NONE_WORDS:
        parsed = True  # a bare "无" is a valid empty answer
    return found, parsed


def entity_f1(
    gold: list[set[tuple[str, str]]], predicted: list[set[tuple[str, str]]], labels: list[str]
) -> dict[str, float]:
    """Precision/recall/F1 (%) per label and micro over all labels, on exact (text, label)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold documents but {len(predicted)} predictions")
    counts = {label: [0, 0, 0] for label in labels}  # true pos, false pos, false neg
    for gold_set, predicted_set in zip(gold, predicted):
        for text, label in predicted_set:
            counts.setdefault(label, [0, 0, 0])[0 if (text, label) in gold_set else 1] += 1
        for _text, label in gold_set - predicted_set:
            counts.setdefault(label, [0, 0, 0])[2] += 1
    metrics: dict[str, float] = {}
    for label, (tp, fp, fn) in counts.items():
        metrics.update(_prf(f"/{label}", tp, fp, fn))
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    metrics.update(_prf("_micro", *totals))
    return metrics


def _prf(suffix: str, tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        f"precision{suffix}": 100 * precision,
        f"recall{suffix}": 100 * recall,
        f"f1{suffix}": 100 * f1,
    }


class NERTask:
    """Config: config/eval.py NERConfig (a dict or DictConfig is typed as one). Labels: the
    configured ones, else CCKS's six for ccks2019, else those seen in the data."""

    deterministic = False

    def __init__(self, cfg: NERConfig | Any) -> None:
        cfg = eval_task(cfg, kind="ner")
        reader, options = cfg.reader, dict(cfg.reader_options)
        shot_docs = read_ner_file(Path(cfg.shot_file), reader, options)
        self.docs = read_ner_file(Path(cfg.test_file), reader, options)
        if cfg.limit:
            self.docs = self.docs[: cfg.limit]
        shots = cfg.shots
        if len(shot_docs) < shots:
            raise ValueError(f"{cfg.shot_file}: {len(shot_docs)} documents < {shots} shots")
        if cfg.labels:
            self.labels = list(cfg.labels)
        elif reader == "ccks2019":
            self.labels = list(CCKS_LABELS)
        else:
            seen = [lab for doc in shot_docs + self.docs for _, lab in doc.entities]
            self.labels = list(dict.fromkeys(seen))
        self.prompts = [build_ner_prompt(d, shot_docs[:shots], self.labels) for d in self.docs]
        self.max_new_tokens = cfg.max_new_tokens

    def meta(self) -> dict[str, Any]:
        return {
            "documents": len(self.docs),
            "labels": self.labels,
            "matching": "exact (text, label), per-document sets",
        }

    def run(self, model: EvalModel, seed: int) -> dict[str, Any]:
        outputs = model.generate(self.prompts, self.max_new_tokens, seed)
        parsed = [parse_ner_answer(o, self.labels) for o in outputs]
        gold = [set(d.entities) for d in self.docs]
        return {
            "metrics": entity_f1(gold, [p for p, _ in parsed], self.labels),
            "counts": {"documents": len(self.docs), "unparseable": sum(not ok for _, ok in parsed)},
            "samples": [{"output": o} for o in outputs[:2]],
            "predictions": [
                {
                    "prompt": prompt,
                    "output": output,
                    "predicted": sorted(found),  # [text, label] pairs, as the F1 counts them
                    "reference": sorted(doc.entities),
                    "parsed": ok,
                }
                for prompt, output, (found, ok), doc in zip(
                    self.prompts, outputs, parsed, self.docs
                )
            ],
        }
