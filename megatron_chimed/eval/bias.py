"""Bias on attitude scales (CAMI, MICA): ask each statement, parse the option, average the score.

A scale file is JSON (the official items are licensed, so users supply their own)::

    {"name": "MICA", "prompt": "...请在{options}中选择{statement}",
     "options": ["完全不同意", ..., "完全同意"],          # most-disagree -> most-agree
     "items": [{"id": "1", "statement": "...", "keying": "agree_biased"}, ...]}

Per-item bias score (paper §4, higher = more biased): for ``agree_biased`` items the
most-disagree option scores 1 and the most-agree N; ``disagree_biased`` items are reversed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_chimed.config.eval import BiasConfig
from megatron_chimed.config.load import eval_task

from .errors import DataFormatError, expect_object, read_text
from .model_api import EvalModel

KEYINGS = ("agree_biased", "disagree_biased")


@dataclass(frozen=True)
class BiasItem:
    item_id: str
    statement: str
    keying: str


@dataclass(frozen=True)
class BiasScale:
    name: str
    prompt: str
    options: tuple[str, ...]
    items: tuple[BiasItem, ...]

    def render(self, item: BiasItem) -> str:
        listed = "、".join(f"“{o}”" for o in self.options)
        # str.replace, not str.format: statements may contain braces.
        return self.prompt.replace("{options}", listed).replace("{statement}", item.statement)


def load_scale(path: Path) -> BiasScale:
    try:
        data = expect_object(json.loads(read_text(path)), f"{path}: the scale")
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from None
    for field, kind in (("name", str), ("prompt", str), ("options", list), ("items", list)):
        if not isinstance(data.get(field), kind):
            raise DataFormatError(f"{path}: field {field!r} must be a {kind.__name__}")
    if "{statement}" not in data["prompt"]:
        raise DataFormatError(f"{path}: field 'prompt' lacks the placeholder {{statement}}")
    options = tuple(str(o) for o in data["options"])
    if len(options) < 2 or len(set(options)) != len(options):
        raise DataFormatError(f"{path}: field 'options' needs at least two distinct options")
    items = []
    for index, item in enumerate(data["items"]):
        where = f"{path}: items[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("statement"), str):
            raise DataFormatError(f"{where}: field 'statement' must be a string")
        if item.get("keying") not in KEYINGS:
            keying = item.get("keying")
            raise DataFormatError(f"{where}: field 'keying' is {keying!r}, not one of {KEYINGS}")
        items.append(BiasItem(str(item.get("id", index + 1)), item["statement"], item["keying"]))
    if not items:
        raise DataFormatError(f"{path}: field 'items' is empty")
    return BiasScale(data["name"], data["prompt"], options, tuple(items))


def parse_option(answer: str, options: tuple[str, ...]) -> str | None:
    """The one option the answer names, or None if it names none or several.

    Longer options are matched first and blanked out, so 完全不同意 is not also read as
    不同意 or 同意. An answer that names two different options is ambiguous (None).
    """
    remaining = answer
    chosen: set[str] = set()
    for option in sorted(options, key=len, reverse=True):
        if option in remaining:
            chosen.add(option)
            remaining = remaining.replace(option, "\0")
    return chosen.pop() if len(chosen) == 1 else None


def bias_score(option: str, options: tuple[str, ...], keying: str) -> int:
    """1..N with N = most biased; ``options`` run from most-disagree to most-agree."""
    position = options.index(option)  # 0 = most-disagree
    if keying == "agree_biased":
        return position + 1
    if keying == "disagree_biased":
        return len(options) - position
    raise ValueError(f"keying {keying!r} not in {KEYINGS}")


class BiasTask:
    """Config: config/eval.py BiasConfig (a dict or DictConfig is typed as one)."""

    deterministic = False

    def __init__(self, cfg: BiasConfig | Any) -> None:
        cfg = eval_task(cfg, kind="bias")
        self.scale = load_scale(Path(cfg.scale_file))
        self.prompts = [self.scale.render(item) for item in self.scale.items]
        self.max_new_tokens = cfg.max_new_tokens

    def meta(self) -> dict[str, Any]:
        return {
            "scale": self.scale.name,
            "items": len(self.scale.items),
            "range": [1, len(self.scale.options)],
        }

    def run(self, model: EvalModel, seed: int) -> dict[str, Any]:
        outputs = model.generate(self.prompts, self.max_new_tokens, seed)
        scores, unparsed, records = [], 0, []
        for item, prompt, output in zip(self.scale.items, self.prompts, outputs):
            option = parse_option(output, self.scale.options)
            score = None if option is None else bias_score(option, self.scale.options, item.keying)
            if score is None:
                unparsed += 1
            else:
                scores.append(score)
            records.append(
                {
                    "id": item.item_id,
                    "prompt": prompt,
                    "output": output,
                    "option": option,
                    "bias_score": score,
                }
            )
        # NaN when nothing parsed: a number here would claim a bias level we never measured.
        mean = sum(scores) / len(scores) if scores else float("nan")
        return {
            "metrics": {"bias_score": mean},
            "counts": {"items": len(outputs), "unparseable": unparsed},
            "samples": [{"prompt": p, "output": o} for p, o in zip(self.prompts[:2], outputs)],
            "predictions": records,
        }
