"""The `data` group of the rs stage: where prompts come from (the SFT sources config, read by
the same readers) and how many answers are drawn, scored and kept (conf/stage/rs.yaml).

Stage-specific keys live under `data`, as the rm stage's do, because the root RunConfig is
strict and `data` is the one group each stage validates itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from megatron_chimed.data.sft import SFTDataConfig
from megatron_chimed.generation import GenerationConfig


def _sampling() -> GenerationConfig:
    # Llama-2's RS samples at temperature ~1 so that the N answers differ; greedy would give N
    # copies of one answer and nothing to choose from.
    return GenerationConfig(temperature=1.0, top_p=0.9, max_new_tokens=512)


@dataclass
class RSConfig(SFTDataConfig):
    """`sources` (and template, seq_length, packing, seed ...) as for SFT; the RS keys below.
    The policy of round 0 is `checkpoint.load`; `generation.num_samples` and `generation.seed`
    are set by the stage (num_samples, and a seed per round and shard)."""

    reward_checkpoint: str = ""
    num_prompts: int = 10000
    num_samples: int = 4  # answers per prompt (N)
    top_k: int = 1  # kept answers per prompt
    score_threshold: float | None = None  # keep only answers scoring above it
    rounds: int = 1  # round r's policy is round r-1's fine-tuned model
    shard_prompts: int = 64  # prompts per shard: the unit of DP work and of resume
    score_batch_size: int = 8
    stop_after_phase: str | None = None  # end the job after this phase (a phase name)
    generation: GenerationConfig = field(default_factory=_sampling)

    def validate(self) -> None:
        super().validate()
        checks = {
            "reward_checkpoint": bool(self.reward_checkpoint),
            "num_prompts": self.num_prompts >= 1,
            "num_samples": self.num_samples >= 1,
            "top_k": 1 <= self.top_k <= self.num_samples,
            "rounds": self.rounds >= 1,
            "shard_prompts": self.shard_prompts >= 1,
            "score_batch_size": self.score_batch_size >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"data.{key}={getattr(self, key)!r} is out of range or unset")
        self.generation.validate()


def load_rs_config(data: Any) -> RSConfig:
    """A validated RSConfig from the composed `data` group."""
    merged = OmegaConf.merge(OmegaConf.structured(RSConfig), data or {})
    rs: RSConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    rs.validate()
    return rs
