"""The typed `eval` section: one dataclass per task kind (`task:` in conf/eval/<name>.yaml) and
the suite (conf/eval/suite.yaml). A leaf like config/schema.py: no torch, nothing of ours.

`config/load.py` merges each task into the dataclass its `task` names (`EVAL_TASKS`), so a
misspelt key or a wrong type fails at start naming `eval.tasks.<name>.<key>` instead of being
read as its default; the tasks in megatron_chimed/eval read these objects, so the defaults
below are the only ones. `???` (omegaconf MISSING) marks a key the task cannot do without.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING

DEFAULT_SEEDS = (0, 1, 2, 3, 4)  # the paper reports the mean of five runs


@dataclass
class EvalTaskConfig:
    """The keys every task kind has. `seeds: null` in a suite uses the suite's seeds."""

    name: str | None = None  # the results' file stem (one task run alone)
    task: str = MISSING  # the kind: a key of EVAL_TASKS
    template: str = "{prompt}"  # wraps each prompt, e.g. "<human>:{prompt}\n<bot>:"
    seeds: list[int] | None = None
    max_new_tokens: int = 256

    def prompt_template(self) -> str:
        """The template the runner wraps prompts in (a kind may derive it from its protocol)."""
        return self.template

    # key -> the values it accepts; checked by `validate` (strings, not enums: the tasks and
    # the results files use the plain names).
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    def validate(self, where: str) -> None:
        """Raise ValueError naming `where`.<key> for a value the task cannot run with."""
        for key, allowed in self.choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"config key '{where}.{key}': {getattr(self, key)!r} is not one of "
                    f"{list(allowed)}"
                )
        # None: a text-generation protocol's own default (TextGenerationConfig.setting).
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"config key '{where}.max_new_tokens': must be >= 1")


@dataclass
class MultiChoiceConfig(EvalTaskConfig):
    """C-Eval, CMMLU, MedQA, or your own JSON Lines file (`format: jsonl`): k-shot prompts,
    scored by the answer letter's log-prob (once: deterministic) or parsed from a generated
    answer.

    `protocol` (README, "Evaluation protocols"): `official` follows the benchmarks' own
    evaluation code (C-Eval's and CMMLU's prompts, the next token's letter scored);
    `lm_eval` reproduces lm-evaluation-harness 0.4's `ceval-valid` / `cmmlu` tasks (their
    prompt, the log-likelihood of " A".." D", acc and acc_norm, subjects weighted by size).
    """

    task: str = "multichoice"
    format: str = MISSING  # the data set's file layout and prompt style
    protocol: str = "official"
    # ceval / cmmlu / medqa: the benchmark's folder, its subjects and splits (all required).
    data_dir: str | None = None
    subjects: list[str] | None = None
    split: str | None = None  # the questions scored (C-Eval's test labels are not public: val)
    shot_split: str | None = None  # where the k shots come from (its first k rows)
    # jsonl: one question per line; shots are the first k lines of shot_file (none: shots 0).
    data_file: str | None = None
    shot_file: str | None = None
    question_field: str = "question"
    options_field: str | None = "options"  # a list or letter->text dict; null: fields A, B, ..
    answer_field: str = "answer"  # a letter ("B") or a 0-based index (1 = B)
    exam_subject: str = "医学"  # named in the prompt's header: 以下是中国关于{...}考试的...
    shots: int = 5
    mode: str = "logprob"
    max_new_tokens: int = 16  # generate mode only
    subject_names: dict[str, str] = field(default_factory=dict)  # zh names for new subjects

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "format": ("ceval", "cmmlu", "medqa", "jsonl"),
        "mode": ("logprob", "generate"),
        "protocol": ("official", "lm_eval"),
    }

    def validate(self, where: str) -> None:
        super().validate(where)
        # Each layout's own keys: a default in their place would read the wrong files.
        if self.format == "jsonl":
            needed = ["data_file"] + (["shot_file"] if self.shots > 0 else [])
        else:
            needed = ["data_dir", "subjects", "split", "shot_split"]
        for key in needed:
            if getattr(self, key) is None:
                extra = " (or set shots: 0)" if key == "shot_file" else ""
                raise ValueError(
                    f"config key '{where}.{key}': format {self.format} needs it{extra}"
                )
        if self.shots < 0:
            raise ValueError(f"config key '{where}.shots': must be >= 0")
        if self.protocol == "lm_eval":
            self._validate_lm_eval(where)

    def _validate_lm_eval(self, where: str) -> None:
        # lm-eval has these two tasks only, scores log-likelihoods and applies no chat template
        # unless asked: anything else would be our own variant under lm-eval's name.
        if self.format not in LM_EVAL_FORMATS:
            raise ValueError(
                f"config key '{where}.protocol': lm_eval reproduces lm-evaluation-harness's "
                f"ceval-valid and cmmlu tasks; format {self.format} has no lm-eval task "
                "(use protocol: official)"
            )
        if self.mode != "logprob":
            raise ValueError(
                f"config key '{where}.mode': protocol lm_eval scores log-likelihoods; "
                f"mode must be logprob, not {self.mode}"
            )
        if self.template != "{prompt}":
            raise ValueError(
                f"config key '{where}.template': protocol lm_eval feeds lm-eval's prompt as is, "
                f"without a chat template; set it to '{{prompt}}', not {self.template!r}"
            )


LM_EVAL_FORMATS = ("ceval", "cmmlu")  # the layouts with an lm-eval task of the same prompt


@dataclass
class NERConfig(EvalTaskConfig):
    """Few-shot entity extraction (CCKS-2019, ChiMST), entity F1 on exact (text, label)."""

    task: str = "ner"
    reader: str = MISSING
    # bio: token_column, tag_column, joiner; span_jsonl: text_key, entities_key, start_key,
    # end_key, label_key, end_inclusive (megatron_chimed/eval/ner_data.py)
    reader_options: dict[str, Any] = field(default_factory=dict)
    shot_file: str = MISSING
    test_file: str = MISSING
    shots: int = 5
    labels: list[str] | None = None  # None: CCKS's six for ccks2019, else those in the data
    limit: int | None = None  # first N test documents only

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"reader": ("ccks2019", "span_jsonl", "bio")}


@dataclass
class TextGenerationConfig(EvalTaskConfig):
    """Open-ended answers scored with BLEU and ROUGE against a reference.

    `protocol` (README, "Evaluation protocols"): `standard` prompts zero-shot with the task's
    instruction and scores with sacrebleu's `zh` tokens and rouge-score; `paper` reproduces
    the authors' released script (Fengshenbang-LM dev_bio, ziya_llama2_13b_medical/generate.py
    and multi_turn_generate.py): `<human>:..\n<bot>:..` prompts with 5 shots, top-p 0.85 at
    temperature 1.0, 512 new tokens, nltk corpus BLEU and the `rouge` package's F on
    character-split text. `null` below takes the protocol's value (PROTOCOL_DEFAULTS).
    """

    task: str = "text_generation"
    kind: str = MISSING  # the data set's reader
    data_file: str = MISSING
    protocol: str = "standard"
    template: str | None = None  # type: ignore[assignment]  # None: the protocol's
    max_new_tokens: int | None = None  # type: ignore[assignment]  # None: the protocol's
    shots: int | None = None  # paper: the first k items of shot_file before each question
    shot_file: str | None = None  # same layout as data_file
    temperature: float | None = None  # None: the protocol's (standard: the model's decoding)
    top_p: float | None = None
    roles: list[str] = field(default_factory=lambda: ["<human>", "<bot>"])  # paper's tags
    question_field: str = "question"  # qa_jsonl: the keys of your own question/answer file
    answer_field: str = "answer"
    bleu_level: str = "corpus"  # standard: corpus | sentence (mean of smoothed sentence BLEU)
    turns: str = "last"  # mc_dialogue: the last doctor reply of each dialogue, or all
    instruction: str | None = None  # standard: None: the kind's own instruction; "": none
    limit: int | None = None  # first N items only

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "kind": ("chimed_qa", "mc_dialogue", "qa_jsonl"),
        "bleu_level": ("corpus", "sentence"),
        "turns": ("last", "all"),
        "protocol": ("standard", "paper"),
    }

    def setting(self, key: str) -> Any:
        """`key`'s value: the one set, else the protocol's default for this kind."""
        value = getattr(self, key)
        if value is not None:
            return value
        defaults = PROTOCOL_DEFAULTS[self.protocol]
        return defaults.get(f"{key}.{self.kind}", defaults.get(key))

    def prompt_template(self) -> str:
        return str(self.setting("template"))

    def validate(self, where: str) -> None:
        super().validate(where)
        checks = {
            "shots": lambda v: v >= 0,
            "temperature": lambda v: v >= 0,
            "top_p": lambda v: 0 < v <= 1,
        }
        for key, ok in checks.items():
            value = getattr(self, key)
            if value is not None and not ok(value):
                raise ValueError(f"config key '{where}.{key}': {value!r} is out of range")
        shots = self.setting("shots")
        if self.protocol == "standard" and shots:
            raise ValueError(
                f"config key '{where}.shots': protocol standard is zero-shot; "
                "protocol paper prompts with shots"
            )
        if self.protocol == "paper":
            if shots and self.kind == "mc_dialogue":
                raise ValueError(
                    f"config key '{where}.shots': the paper's dialogue script prompts with "
                    "the dialogue only (no shots); set shots: 0 or null"
                )
            if shots and self.shot_file is None:
                raise ValueError(
                    f"config key '{where}.shot_file': protocol paper prompts with {shots} "
                    "shots (the script's --dev file); name a file in data_file's layout, "
                    "or set shots: 0"
                )
            if self.template not in (None, "{prompt}"):
                raise ValueError(
                    f"config key '{where}.template': protocol paper writes its own "
                    f"{self.roles[0]}/{self.roles[1]} turns; set it to null or '{{prompt}}', "
                    f"not {self.template!r}"
                )
            if len(self.roles) != 2 or not all(self.roles):
                raise ValueError(
                    f"config key '{where}.roles': two speaker tags, user's then model's"
                )


# protocol -> key (or key.kind) -> the value a `null` key takes. `paper`: the released script.
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "standard": {
        "template": "<human>:{prompt}\n<bot>:",
        "max_new_tokens": 256,
        "max_new_tokens.mc_dialogue": 128,
        "shots": 0,
    },
    "paper": {
        "template": "{prompt}",  # the protocol writes its own turns
        "max_new_tokens": 512,
        "shots": 5,
        "shots.mc_dialogue": 0,
        "temperature": 1.0,
        "top_p": 0.85,
    },
}


@dataclass
class BiasConfig(EvalTaskConfig):
    """CAMI / MICA attitude scales: the option the model names per statement."""

    task: str = "bias"
    scale_file: str = MISSING
    max_new_tokens: int = 32


# `task:` -> its dataclass; megatron_chimed/eval/runner.py maps the same names to the tasks.
EVAL_TASKS: dict[str, type[EvalTaskConfig]] = {
    "multichoice": MultiChoiceConfig,
    "ner": NERConfig,
    "text_generation": TextGenerationConfig,
    "bias": BiasConfig,
}


@dataclass
class EvalSuiteConfig:
    """Several tasks in one run and one results file (`{name}.json`, `{name}.md`)."""

    name: str = "suite"
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))  # tasks' default
    tasks: dict[str, Any] = field(default_factory=dict)  # name -> an EVAL_TASKS dataclass
