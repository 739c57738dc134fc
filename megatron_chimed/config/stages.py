"""The typed sections of the stages that have settings beyond data, training and optim: `rm:`
(conf/stage/rm.yaml) and `rs:` (conf/stage/rs.yaml), and the generation settings `rs:` and
`chimed generate` share. A leaf like config/schema.py: no torch, nothing else of ours.

The stage's files stay in `data` (the stage's data schema, megatron_chimed/stages STAGES).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# How K ranked answers become training pairs (reward/batch.py implements each).
RM_PAIRINGS = ("adjacent", "all", "binary")
# The phases of a rejection-sampling round, in order (stages/rs.py).
RS_PHASES = ("prompts", "generate", "score", "select", "train")


@dataclass
class RMConfig:
    """`rm:`: pairs, margin and the epoch-based schedule of the reward model (paper section
    2.3, appendix A). The stage turns epochs into iterations from the train split's size."""

    pairing: str = "adjacent"  # training pairs: adjacent | all | binary
    eval_pairing: str = "all"  # validation/test pairs (all K are forwarded either way)
    margin: float = 0.0
    epochs: float = 2.0
    warmup_fraction: float = 0.03
    min_warmup_iters: int = 5

    def __post_init__(self) -> None:
        for key in ("pairing", "eval_pairing"):
            if getattr(self, key) not in RM_PAIRINGS:
                raise ValueError(f"rm.{key}={getattr(self, key)!r}: expected {list(RM_PAIRINGS)}")


@dataclass
class GenerationConfig:
    """Generation settings (`chimed generate` / the RS stage). `temperature=0` means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    seed: int = 1234
    num_samples: int = 1  # answers per prompt
    batch_size: int = 8  # sequences decoded together (rows = prompts x num_samples)
    use_kv_cache: bool = True  # False recomputes the whole sequence per token (tests, bench)
    template: str = "ziya"  # megatron_chimed.data.template name, for chat-message prompts
    instruction: str | None = None  # prefix of the first user message, e.g. DOCTOR_INSTRUCTION

    def validate(self) -> None:
        """Raise ValueError naming the field that is out of range."""
        checks = {
            "max_new_tokens": self.max_new_tokens >= 1,
            "temperature": self.temperature >= 0,
            "top_k": self.top_k >= 0,
            "top_p": 0 < self.top_p <= 1,
            "num_samples": self.num_samples >= 1,
            "batch_size": self.batch_size >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"generation.{key}={getattr(self, key)!r} is out of range")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _rs_sampling() -> GenerationConfig:
    # Llama-2's RS samples at temperature ~1 so that the N answers differ; greedy would give N
    # copies of one answer and nothing to choose from.
    return GenerationConfig(temperature=1.0, top_p=0.9, max_new_tokens=512)


@dataclass
class RSConfig:
    """`rs:`: how many answers are drawn, scored and kept per round. Prompts come from the SFT
    sources in `data`; the policy of round 0 is `checkpoint.load`; `generation.num_samples` and
    `generation.seed` are set by the stage (num_samples, and a seed per round and shard)."""

    reward_checkpoint: str = ""
    num_prompts: int = 10000
    num_samples: int = 4  # answers per prompt (N)
    top_k: int = 1  # kept answers per prompt
    score_threshold: float | None = None  # keep only answers scoring above it
    rounds: int = 1  # round r's policy is round r-1's fine-tuned model
    shard_prompts: int = 64  # prompts per shard: the unit of DP work and of resume
    score_batch_size: int = 8
    stop_after_phase: str | None = None  # end the job after this phase (a phase name)
    generation: GenerationConfig = field(default_factory=_rs_sampling)

    def validate(self) -> None:
        """Raise ValueError naming the key (called by the rs stage: other stages leave `rs`
        at its defaults, reward_checkpoint unset)."""
        checks = {
            "reward_checkpoint": bool(self.reward_checkpoint),
            "num_prompts": self.num_prompts >= 1,
            "num_samples": self.num_samples >= 1,
            "top_k": 1 <= self.top_k <= self.num_samples,
            "rounds": self.rounds >= 1,
            "shard_prompts": self.shard_prompts >= 1,
            "score_batch_size": self.score_batch_size >= 1,
            "stop_after_phase": self.stop_after_phase in (None, *RS_PHASES),
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"rs.{key}={getattr(self, key)!r} is out of range or unset")
        self.generation.validate()
