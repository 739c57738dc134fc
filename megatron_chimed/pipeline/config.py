"""The `pipeline` config node (set by conf/experiment/*.yaml): what the pipeline runs and on
which data, on top of the stage configs each step composes."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA

STEP_NAMES = ("base", "convert", "preprocess", "cpt", "sft", "rm", "rs", "export", "eval")


def _sample_pretrain() -> list[str]:
    return [str(p) for p in sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl"))]


def _demo_data() -> dict[str, str]:
    return {"cpt": "sample", "sft": "sft_sample", "rm": "reward_sample", "rs": "sft_sample"}


@dataclass
class PipelineConfig:
    # The HF folder of the base model (Ziya-13B-v2). None builds the tiny test model instead,
    # which is what the offline demo runs on.
    base_hf: str | None = None
    steps: list[str] = field(default_factory=lambda: list(STEP_NAMES))
    # Ranks per stage on this node (the tiny demo: one TP=2 group on the CPU).
    nproc_per_node: int = 2
    # JSONL files (CMD pre-train schema, `text`) that CPT trains on after preprocessing.
    pretrain_files: list[str] = field(default_factory=_sample_pretrain)
    preprocess_workers: int = 2
    # The `data` config group of each training stage.
    data: dict[str, str] = field(default_factory=_demo_data)
    # Overrides given to one stage only, e.g. {"rm": ["training.train_iters=30"]}.
    stage_overrides: dict[str, list[str]] = field(default_factory=dict)
    eval_overrides: list[str] = field(default_factory=lambda: ["+eval=suite"])

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in STEP_NAMES]
        if unknown:
            raise ValueError(f"pipeline.steps: unknown {unknown}; expected some of {STEP_NAMES}")
