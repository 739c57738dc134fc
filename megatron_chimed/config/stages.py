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
# How answers are generated (generation/api.py) and how RS keeps them (selection.py).
GENERATION_ENGINES = ("dynamic", "static")
RS_SELECTIONS = ("top_k", "global_top_m")


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
    # dynamic: megatron-core's continuous-batching engine over a paged KV cache (generation/
    # dynamic.py); static: fixed batches of `batch_size` over a static KV cache (decode.py)
    engine: str = "dynamic"
    batch_size: int = 8  # static engine: sequences decoded together
    use_kv_cache: bool = True  # static engine; False recomputes every token (tests, bench)
    # dynamic engine (generation/kv_budget.py): KV pool per rank in GiB; null: a fraction of
    # the free GPU memory (kv_memory_fraction), 0.5 GiB on CPU
    kv_cache_gb: float | None = None
    kv_memory_fraction: float = 0.7
    max_requests: int | None = None  # answers in flight; null: as many as the KV pool holds
    cuda_graphs: bool | None = None  # null: on with a GPU, off on CPU
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
            "engine": self.engine in GENERATION_ENGINES,
            "batch_size": self.batch_size >= 1,
            "kv_cache_gb": self.kv_cache_gb is None or self.kv_cache_gb > 0,
            "kv_memory_fraction": 0 < self.kv_memory_fraction < 1,
            "max_requests": self.max_requests is None or self.max_requests >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                hint = f": expected one of {list(GENERATION_ENGINES)}" if key == "engine" else ""
                raise ValueError(f"generation.{key}={getattr(self, key)!r} is out of range{hint}")

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
    # which answers are kept (rejection_sampling/selection.py): top_k: the top_k best of each
    # prompt; global_top_m: the top_m best of all answers, wherever their prompts
    selection: str = "top_k"
    top_k: int = 1  # kept answers per prompt (selection top_k)
    top_m: int | None = None  # kept answers in all (selection global_top_m)
    score_threshold: float | None = None  # keep only answers scoring above it (either rule)
    rounds: int = 1  # round r's policy is round r-1's fine-tuned model
    shard_prompts: int = 256  # prompts per shard: the unit of DP work and of resume
    score_batch_size: int = 32  # most answers in one reward forward
    score_batch_tokens: int = 32768  # and most tokens (answers x longest, sorted by length)
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
            "score_batch_tokens": self.score_batch_tokens >= 1,
            "stop_after_phase": self.stop_after_phase in (None, *RS_PHASES),
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"rs.{key}={getattr(self, key)!r} is out of range or unset")
        if self.selection not in RS_SELECTIONS:
            raise ValueError(
                f"rs.selection={self.selection!r}: expected one of {list(RS_SELECTIONS)}"
            )
        if self.selection == "global_top_m" and (self.top_m is None or self.top_m < 1):
            raise ValueError(
                f"rs.top_m={self.top_m!r}: rs.selection=global_top_m keeps the top_m answers "
                "by reward over all prompts; set it to a count >= 1"
            )
        self.generation.validate()
