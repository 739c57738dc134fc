"""5-shot multi-choice accuracy (C-Eval, CMMLU, MedQA, your own JSON Lines file).

Protocol ``official`` (the default) follows the benchmarks' own evaluation code: their prompts,
and the next-token log-probabilities of the option letters after the prompt compared (mode
``logprob``: no generation, no parsing, deterministic); mode ``generate`` lets the model write
and parses the letter tolerantly, counting answers with no recognisable letter. Protocol
``lm_eval`` reproduces lm-evaluation-harness's ceval-valid / cmmlu tasks (lm_eval_mc.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from megatron_chimed.config.eval import MultiChoiceConfig
from megatron_chimed.config.load import eval_task

from . import lm_eval_mc
from .model_api import EvalModel
from .multichoice_data import SUBJECT_NAMES_ZH, MCQuestion, load_split, read_mc_jsonl

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
    """Config: config/eval.py MultiChoiceConfig (a dict or DictConfig is typed as one)."""

    def __init__(self, cfg: MultiChoiceConfig | Any) -> None:
        cfg = eval_task(cfg, kind="multichoice")
        # Your own file is prompted as C-Eval is: the closest official wording for a Chinese exam.
        self.style = "ceval" if cfg.format == "jsonl" else cfg.format
        self.protocol = cfg.protocol
        self.mode = cfg.mode
        self.max_new_tokens = cfg.max_new_tokens
        self.deterministic = self.mode == "logprob"
        self.items: list[tuple[MCQuestion, str]] = []
        if cfg.format == "jsonl":
            self.split = str(cfg.data_file)
            self._add_own_file(cfg)
        else:
            self.split = str(cfg.split)
            self._add_benchmark(cfg)

    def _add_own_file(self, cfg: MultiChoiceConfig) -> None:
        fields = (cfg.question_field, cfg.options_field, cfg.answer_field)
        subject = Path(str(cfg.data_file)).stem  # the accuracy key: acc/<file stem>
        examples = read_mc_jsonl(Path(str(cfg.shot_file)), *fields) if cfg.shots else []
        if len(examples) < cfg.shots:
            raise ValueError(f"{cfg.shot_file}: {len(examples)} questions < {cfg.shots} shots")
        questions = read_mc_jsonl(Path(str(cfg.data_file)), *fields, subject=subject)
        if not questions:
            raise ValueError(f"{cfg.data_file}: no questions")
        for q in questions:
            self.items.append(
                (q, build_prompt(q, examples[: cfg.shots], "ceval", cfg.exam_subject))
            )

    def _add_benchmark(self, cfg: MultiChoiceConfig) -> None:
        names = {**SUBJECT_NAMES_ZH, **DEFAULT_SUBJECT_ZH, **cfg.subject_names}
        shots = cfg.shots
        for subject in cfg.subjects or []:
            if subject not in names:
                raise ValueError(f"no Chinese name for subject {subject!r}: set subject_names")
            examples = load_split(self.style, Path(str(cfg.data_dir)), subject, str(cfg.shot_split))
            if len(examples) < shots:
                raise ValueError(f"{subject}: {cfg.shot_split} has {len(examples)} < {shots} shots")
            questions = load_split(self.style, Path(str(cfg.data_dir)), subject, self.split)
            unlabelled = [q.qid for q in questions if not q.answer]
            if unlabelled:
                raise ValueError(
                    f"{subject} {self.split}: {len(unlabelled)} rows have no answer "
                    f"(e.g. id {unlabelled[0]}); C-Eval test labels are not public, use val"
                )
            header_name = names[subject]
            prompt = lm_eval_mc.build_context if self.protocol == "lm_eval" else build_prompt
            for q in questions:
                self.items.append((q, prompt(q, examples[:shots], self.style, header_name)))

    def meta(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "mode": self.mode,
            "split": self.split,
            "questions": len(self.items),
        }

    def run(self, model: EvalModel, seed: int) -> dict[str, Any]:
        if self.protocol == "lm_eval":
            return self._run_lm_eval(model)
        prompts = [p for _, p in self.items]
        option_scores: list[dict[str, float] | None]
        if self.mode == "logprob":
            scored = self._score_options(model, prompts)
            # max() keeps the first of tied letters, so ties resolve the same way every run.
            predictions: list[str | None] = [max(row, key=row.__getitem__) for row in scored]
            option_scores = list(scored)
            outputs: list[str] = [str(p) for p in predictions]
            unparsed = 0
        else:
            outputs = model.generate(prompts, self.max_new_tokens, seed)
            predictions = [
                parse_answer_letter(text, tuple(q.options))
                for (q, _), text in zip(self.items, outputs)
            ]
            option_scores = [None] * len(prompts)
            unparsed = sum(p is None for p in predictions)
        correct: dict[str, list[bool]] = {}
        records = []
        for (q, prompt), output, predicted, scores in zip(
            self.items, outputs, predictions, option_scores
        ):
            correct.setdefault(q.subject, []).append(predicted == q.answer)
            records.append(
                {
                    "id": q.qid,
                    "subject": q.subject,
                    "prompt": prompt,
                    "output": output,
                    "predicted": predicted,
                    "reference": q.answer,
                    "correct": predicted == q.answer,
                    "option_scores": scores,  # letter -> log-prob; null in generate mode
                }
            )
        return {
            "metrics": accuracy_table(correct),
            "counts": {"questions": len(self.items), "unparseable": unparsed},
            "samples": [{"prompt": p, "predicted": x} for p, x in zip(prompts[:2], predictions)],
            "predictions": records,
        }

    def _run_lm_eval(self, model: EvalModel) -> dict[str, Any]:
        """lm-eval's scores (lm_eval_mc.py): every choice's log-likelihood, acc, acc_norm."""
        scored = lm_eval_mc.score_questions(model, self.items)
        marks: dict[str, dict[str, list[float]]] = {}
        records = []
        for (q, prompt), scores in zip(self.items, scored):
            predicted, predicted_norm = lm_eval_mc.predictions(q, scores)
            subject = marks.setdefault(q.subject, {"acc": [], "acc_norm": []})
            subject["acc"].append(float(predicted == q.answer))
            subject["acc_norm"].append(float(predicted_norm == q.answer))
            records.append(
                {
                    "id": q.qid,
                    "subject": q.subject,
                    "prompt": prompt,
                    "output": predicted,
                    "predicted": predicted,
                    "predicted_norm": predicted_norm,
                    "reference": q.answer,
                    "correct": predicted == q.answer,
                    # letter -> log-likelihood of " letter" after the prompt (lm-eval's resps)
                    "option_scores": scores,
                }
            )
        return {
            "metrics": lm_eval_mc.lm_eval_metrics(marks),
            "counts": {"questions": len(self.items), "unparseable": 0},
            "samples": [{"prompt": r["prompt"], "predicted": r["predicted"]} for r in records[:2]],
            "predictions": records,
        }

    def _score_options(self, model: EvalModel, prompts: list[str]) -> list[dict[str, float]]:
        """letter -> next-token log-prob of each question's option letters."""
        # Questions with the same letter set are scored together (MedQA has A-E, others A-D).
        scores: list[dict[str, float]] = [{} for _ in prompts]
        groups: dict[tuple[str, ...], list[int]] = {}
        for index, (q, _) in enumerate(self.items):
            groups.setdefault(tuple(q.options), []).append(index)
        for letters, indices in groups.items():
            rows = model.next_token_logprobs([prompts[i] for i in indices], list(letters))
            for i, row in zip(indices, rows):
                scores[i] = dict(zip(letters, (float(x) for x in row)))
        return scores
