"""5-shot multi-choice accuracy (C-Eval, CMMLU, MedQA) with the benchmarks' official prompts.

Scoring compares the next-token log-probabilities of the option letters after the prompt
(mode ``logprob``: no generation, no parsing, deterministic); mode ``generate`` lets the model
write and parses the letter tolerantly, counting answers with no recognisable letter.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .model_api import EvalModel
from .multichoice_data import SUBJECT_NAMES_ZH, MCQuestion, load_split

# Official headers and answer cues: C-Eval code/evaluator_series, CMMLU src/mp_utils.py.
# MedQA has no official Chinese prompt; it reuses C-Eval's wording (the exam is the MCMLE).
_CEVAL_HEADER = "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n"
_CMMLU_HEADER = "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n"
PROMPT_STYLES = {  # style -> (header, question cue, answer cue)
    "ceval": (_CEVAL_HEADER, "", "答案："),
    "cmmlu": (_CMMLU_HEADER, "题目：", "答案是："),
    "medqa": (_CEVAL_HEADER, "", "答案："),
}
DEFAULT_SUBJECT_ZH = {"mcmle": "医师资格"}


def format_question(q: MCQuestion, style: str, with_answer: bool) -> str:
    _, question_cue, answer_cue = PROMPT_STYLES[style]
    lines = [f"{question_cue}{q.question}"]
    lines += [f"{letter}. {text}" for letter, text in q.options.items()]
    answer = f"{answer_cue}{q.answer}\n\n" if with_answer else answer_cue
    return "\n".join(lines) + "\n" + answer


def build_prompt(q: MCQuestion, shots: list[MCQuestion], style: str, subject_zh: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; known: {sorted(PROMPT_STYLES)}")
    header = PROMPT_STYLES[style][0].format(subject=subject_zh)
    examples = "".join(format_question(s, style, with_answer=True) for s in shots)
    return header + examples + format_question(q, style, with_answer=False)


_LEADING = re.compile(r"^\s*[\(（\[【]?\s*([A-Z])(?![A-Za-z])")
_CUED = re.compile(
    r"(?:答案|选项|选择|应选|选)\s*(?:是|为)?\s*[:：]?\s*[\(（\[【]?\s*([A-Z])(?![A-Za-z])"
)
_STANDALONE = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def parse_answer_letter(text: str, letters: tuple[str, ...]) -> str | None:
    """The option letter a generated answer chooses, or None when it cannot be told.

    Tried in order: a letter opening the answer ("B", "（B）", "B. 钾"), a letter after an
    answer cue ("答案是B", "选C"), and finally a single distinct standalone letter anywhere.
    """
    for pattern in (_LEADING, _CUED):
        match = pattern.search(text)
        if match and match.group(1) in letters:
            return match.group(1)
    found = {m.group(1) for m in _STANDALONE.finditer(text)} & set(letters)
    return found.pop() if len(found) == 1 else None


def accuracy_table(correct_by_subject: dict[str, list[bool]]) -> dict[str, float]:
    """Per-subject accuracy and micro (over questions) / macro (over subjects) averages, in %."""
    metrics: dict[str, float] = {}
    for subject, marks in correct_by_subject.items():
        metrics[f"acc/{subject}"] = 100.0 * sum(marks) / len(marks)
    all_marks = [m for marks in correct_by_subject.values() for m in marks]
    metrics["acc_micro"] = 100.0 * sum(all_marks) / len(all_marks)
    per_subject = [metrics[f"acc/{s}"] for s in correct_by_subject]
    metrics["acc_macro"] = sum(per_subject) / len(per_subject)
    return metrics


class MultiChoiceTask:
    """Config keys: format, data_dir, subjects, split, shot_split, shots, mode, max_new_tokens,
    subject_names (optional zh names for the prompt header)."""

    def __init__(self, cfg: Any) -> None:
        self.style = str(cfg.format)
        self.mode = str(cfg.get("mode", "logprob"))
        if self.mode not in ("logprob", "generate"):
            raise ValueError(f"eval {cfg.get('name')}: mode must be logprob or generate")
        self.max_new_tokens = int(cfg.get("max_new_tokens", 16))
        self.deterministic = self.mode == "logprob"
        names = {**SUBJECT_NAMES_ZH, **DEFAULT_SUBJECT_ZH, **dict(cfg.get("subject_names") or {})}
        shots = int(cfg.get("shots", 5))
        self.items: list[tuple[MCQuestion, str]] = []
        self.split = str(cfg.split)
        for subject in cfg.subjects:
            subject = str(subject)
            if subject not in names:
                raise ValueError(f"no Chinese name for subject {subject!r}: set subject_names")
            examples = load_split(self.style, Path(cfg.data_dir), subject, str(cfg.shot_split))
            if len(examples) < shots:
                raise ValueError(f"{subject}: {cfg.shot_split} has {len(examples)} < {shots} shots")
            questions = load_split(self.style, Path(cfg.data_dir), subject, self.split)
            unlabelled = [q.qid for q in questions if not q.answer]
            if unlabelled:
                raise ValueError(
                    f"{subject} {self.split}: {len(unlabelled)} rows have no answer "
                    f"(e.g. id {unlabelled[0]}); C-Eval test labels are not public, use val"
                )
            header_name = names[subject]
            for q in questions:
                self.items.append((q, build_prompt(q, examples[:shots], self.style, header_name)))

    def meta(self) -> dict[str, Any]:
        return {"mode": self.mode, "split": self.split, "questions": len(self.items)}

    def run(self, model: EvalModel, seed: int) -> dict[str, Any]:
        prompts = [p for _, p in self.items]
        if self.mode == "logprob":
            predictions = self._predict_logprob(model, prompts)
            unparsed = 0
        else:
            outputs = model.generate(prompts, self.max_new_tokens, seed)
            predictions = [
                parse_answer_letter(text, tuple(q.options))
                for (q, _), text in zip(self.items, outputs)
            ]
            unparsed = sum(p is None for p in predictions)
        correct: dict[str, list[bool]] = {}
        for (q, _), predicted in zip(self.items, predictions):
            correct.setdefault(q.subject, []).append(predicted == q.answer)
        return {
            "metrics": accuracy_table(correct),
            "counts": {"questions": len(self.items), "unparseable": unparsed},
            "samples": [{"prompt": p, "predicted": x} for p, x in zip(prompts[:2], predictions)],
        }

    def _predict_logprob(self, model: EvalModel, prompts: list[str]) -> list[str]:
        # Questions with the same letter set are scored together (MedQA has A-E, others A-D).
        predictions: list[str] = [""] * len(prompts)
        groups: dict[tuple[str, ...], list[int]] = {}
        for index, (q, _) in enumerate(self.items):
            groups.setdefault(tuple(q.options), []).append(index)
        for letters, indices in groups.items():
            scores = model.next_token_logprobs([prompts[i] for i in indices], list(letters))
            for i, row in zip(indices, scores):
                # max() keeps the first of tied letters, so ties resolve the same way every run.
                predictions[i] = letters[max(range(len(letters)), key=row.__getitem__)]
        return predictions
