"""Every config dataclass of a run, in one leaf module: what `conf/` may say, typed.

Hydra composes `conf/` (one group per dataclass below: `model/`, `parallel/`, `launcher/`,
`training/`, `optim/`, `checkpoint/`, ...) and `config/load.py` merges the result into
`RunConfig`, so an unknown key or a wrong type fails at start, naming the key. The behaviour
each section drives lives with its component (model/builder.py, training/loop.py ...); those
modules import their section from here, never the other way round.

This module imports no torch and nothing of ours but its siblings config/stages.py (the typed
stage sections) and config/launcher.py: the Slurm login node (`launch/submit.py`) reads
configs without loading the framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_chimed.config.launcher import LauncherConfig
from megatron_chimed.config.stages import RMConfig, RSConfig

# The bundled sample data (demo, tests): package data, found without importing anything.
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
PRECISIONS = ("fp32", "bf16", "fp16")


# megatron-core's AttnBackend names (transformer/enums.py).
ATTENTION_BACKENDS = ("auto", "flash", "fused", "unfused", "local")


@dataclass
class ModelConfig:
    """Architecture of a LLaMA-family decoder (Ziya-13B-v2 in `conf/model/ziya_13b_v2.yaml`).

    ``vocab_size`` is the tokenizer's true size; the embedding is padded at build time (see
    ``padded_vocab_size``) and exports trim back to this number.
    """

    name: str = "tiny"
    hidden_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 4
    num_query_groups: int = 4
    ffn_hidden_size: int = 176
    vocab_size: int = 1000
    norm_epsilon: float = 1e-6
    rotary_base: float = 10000.0
    max_position_embeddings: int = 256
    untie_embeddings_and_output_weights: bool = True
    init_method_std: float = 0.02
    make_vocab_size_divisible_by: int = 128
    # How layers are implemented, not what they compute: `auto` = Transformer Engine (fused norms,
    # flash attention) where CUDA and TE exist, else megatron-core's local spec. Checkpoints use
    # TE's key names either way (the local spec maps its norms onto them): one serves both.
    transformer_impl: str = "auto"
    # Transformer Engine's attention kernel: `auto` lets TE pick per shape and GPU (cuDNN fused
    # attention on Hopper, flash-attn elsewhere), as megatron-core's default does. Forcing
    # `flash` makes megatron disable TE's fused and unfused backends, so a missing or
    # out-of-range flash-attn leaves no backend at all. `local` is megatron's own PyTorch one.
    attention_backend: str = "auto"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, tensor_parallel: int) -> int:
        """Megatron-LM's padding: a multiple of 128 x TP, so every TP shard is 128-aligned."""
        multiple = self.make_vocab_size_divisible_by * tensor_parallel
        return math.ceil(self.vocab_size / multiple) * multiple

    def validate(self, tensor_parallel: int = 1, seq_length: int | None = None) -> None:
        """Raise ValueError naming the field for a shape that cannot be built or split."""
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"model.attention_backend={self.attention_backend!r}: expected one of "
                f"{', '.join(ATTENTION_BACKENDS)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"model.num_attention_heads={self.num_attention_heads} is not divisible by "
                f"model.num_query_groups={self.num_query_groups}"
            )
        for key in ("num_attention_heads", "num_query_groups"):
            value = getattr(self, key)
            if value % tensor_parallel:
                raise ValueError(
                    f"model.{key}={value} is not divisible by "
                    f"parallel.tensor_model_parallel_size={tensor_parallel}"
                )
        if self.ffn_hidden_size % tensor_parallel:
            raise ValueError(
                f"model.ffn_hidden_size={self.ffn_hidden_size} is not divisible by "
                f"parallel.tensor_model_parallel_size={tensor_parallel}"
            )
        if seq_length is not None and seq_length > self.max_position_embeddings:
            raise ValueError(
                f"seq_length={seq_length} is longer than "
                f"model.max_position_embeddings={self.max_position_embeddings}"
            )


@dataclass
class ParallelConfig:
    """How the model is split: `conf/parallel/*.yaml`. DP is whatever the world size leaves."""

    tensor_model_parallel_size: int = 1
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = True
    # megatron DDP's communication (DistributedDataParallelConfig). On by default as in
    # Megatron-Bridge's Llama recipes (recipes/llama/llama2.py: overlap_grad_reduce and
    # overlap_param_gather with the distributed optimizer). overlap_param_gather is
    # moot without use_distributed_optimizer (it overlaps that optimizer's param all-gather).
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True
    # Launch the param all-gathers of all pipeline stages together; only pipeline parallelism
    # reads it (we have none). Off: megatron-core's DistributedDataParallelConfig default.
    align_param_gather: bool = False
    # DDP bucket in elements; null: megatron's max(40M, 1M x DP) when overlapping grad reduce.
    bucket_size: int | None = None
    # Fuse the weight-gradient GEMM into the fp32 main_grad accumulation (Megatron-LM's
    # default, --no-gradient-accumulation-fusion turns it off). GPU only: the output layer needs
    # Apex's fused_weight_gradient_mlp_cuda; a GPU run without it is an error, never a fallback.
    gradient_accumulation_fusion: bool = True
    # Activation recompute (TransformerConfig): null | selective (core attention) | full, with
    # recompute_method uniform | block and recompute_num_layers (full only).
    recompute_granularity: str | None = None
    recompute_method: str | None = None
    recompute_num_layers: int | None = None
    # The loss's cross entropy as one fused kernel chain (megatron-core's ModelParallelConfig
    # names; Megatron-LM --cross-entropy-loss-fusion, --cross-entropy-fusion-impl): `native`
    # is megatron's torch.compile'd one (bf16 runs only: it returns bf16 logit gradients),
    # `te` Transformer Engine's. GPU only; the CPU runs the unfused one, said once in the log.
    # The padded vocabulary is masked before either (training/loss.py).
    cross_entropy_loss_fusion: bool = True
    cross_entropy_fusion_impl: str = "native"
    # Overlap the TP all-gathers / reduce-scatters with the GEMMs (Transformer Engine
    # userbuffers, megatron's tp_comm_overlap). Needs TE and sequence parallelism; the buffers
    # are sized for training.seq_length x micro_batch_size tokens.
    tp_comm_overlap: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the key for a combination megatron cannot run."""
        if self.bucket_size is not None and self.bucket_size < 1:
            raise ValueError(f"parallel.bucket_size={self.bucket_size} must be >= 1 (or null)")
        if self.cross_entropy_fusion_impl not in CROSS_ENTROPY_FUSION_IMPLS:
            raise ValueError(
                f"parallel.cross_entropy_fusion_impl={self.cross_entropy_fusion_impl!r}: "
                f"expected {' or '.join(CROSS_ENTROPY_FUSION_IMPLS)}"
            )
        if self.tp_comm_overlap and not (
            self.sequence_parallel and self.tensor_model_parallel_size > 1
        ):
            raise ValueError(
                "parallel.tp_comm_overlap=true needs sequence parallelism "
                "(parallel.sequence_parallel=true and tensor_model_parallel_size > 1, e.g. "
                "parallel=tp2): it overlaps sequence parallelism's all-gathers and "
                "reduce-scatters"
            )
        granularity = self.recompute_granularity
        method, layers = self.recompute_method, self.recompute_num_layers
        if granularity not in RECOMPUTE_GRANULARITIES:
            raise ValueError(
                f"parallel.recompute_granularity={granularity!r}: expected null, selective or full"
            )
        if method is not None and method not in RECOMPUTE_METHODS:
            raise ValueError(
                f"parallel.recompute_method={method!r}: expected {' or '.join(RECOMPUTE_METHODS)}"
            )
        if granularity == "full":
            if method is None:
                raise ValueError(
                    "parallel.recompute_method is required with recompute_granularity=full: "
                    "uniform or block"
                )
            if layers is None or layers < 1:
                raise ValueError(
                    f"parallel.recompute_num_layers={layers} must be >= 1 with "
                    "recompute_granularity=full"
                )
        else:  # selective recomputes core attention in every layer; none recomputes nothing
            for key, value in (("recompute_method", method), ("recompute_num_layers", layers)):
                if value is not None:
                    raise ValueError(
                        f"parallel.{key}={value!r} is only read with recompute_granularity=full "
                        f"(it is {granularity!r}): set it to null"
                    )


# megatron-core's TransformerConfig values (transformer/transformer_config.py).
RECOMPUTE_GRANULARITIES = (None, "selective", "full")
RECOMPUTE_METHODS = ("uniform", "block")
# megatron-core's ModelParallelConfig.cross_entropy_fusion_impl values.
CROSS_ENTROPY_FUSION_IMPLS = ("native", "te")


@dataclass
class TrainingConfig:
    """`conf/training/*.yaml` (steps, batch, logging); the stage file sets seq_length."""

    seq_length: int = 4096
    micro_batch_size: int = 1
    global_batch_size: int = 16
    train_iters: int = 1000
    exit_after: int | None = None  # stop (with a checkpoint) after this iteration
    log_interval: int = 10
    eval_interval: int = 0  # 0: no periodic validation
    eval_iters: int = 10  # global batches per validation
    dataloader_workers: int = 2
    tensorboard: bool = True
    tokenizer: str | None = None  # default: the tokenizer/ of checkpoint.load

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the key for a value the loop cannot run with (a zero
        interval or batch divides by zero after the first step; zero iterations does nothing)."""
        at_least = {"seq_length": 1, "micro_batch_size": 1, "global_batch_size": 1,
                    "train_iters": 1, "log_interval": 1, "eval_interval": 0, "eval_iters": 0,
                    "dataloader_workers": 0}  # fmt: skip
        for key, low in at_least.items():
            if getattr(self, key) < low:
                raise ValueError(f"training.{key}={getattr(self, key)} must be >= {low}")
        if self.exit_after is not None and self.exit_after < 1:
            raise ValueError(f"training.exit_after={self.exit_after} must be >= 1 (or null)")

    def num_microbatches(self, data_parallel: int) -> int:
        per_step = self.micro_batch_size * data_parallel
        if self.global_batch_size % per_step:
            raise ValueError(
                f"training.global_batch_size={self.global_batch_size} is not a multiple of "
                f"training.micro_batch_size={self.micro_batch_size} x data parallel "
                f"{data_parallel}"
            )
        return self.global_batch_size // per_step


DECAY_STYLES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """`conf/optim/*.yaml`; the stage files set the paper's values (e.g. CPT: 5e-5, 0.9/0.95)."""

    lr: float = 5e-5
    min_lr_ratio: float = 0.1  # min LR = lr x this, reached at the end of the decay
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_iters: int = 0
    decay_style: str = "cosine"
    decay_iters: int | None = None  # default: training.train_iters

    def __post_init__(self) -> None:
        if self.decay_style not in DECAY_STYLES:
            raise ValueError(f"optim.decay_style={self.decay_style!r}: expected {DECAY_STYLES}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio={self.min_lr_ratio}: expected 0..1")


STEP_NAMES = ("base", "convert", "preprocess", "cpt", "sft", "rm", "rs", "export", "eval")


def _sample_pretrain() -> list[str]:
    return [str(p) for p in sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl"))]


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
    # The JSON field holding each document's text (preprocess's --json-keys), e.g. "content".
    pretrain_text_field: str = "text"
    preprocess_workers: int = 2
    # The `data` config group of a training stage; a stage not named here uses its demo data
    # (megatron_chimed/stages STAGES: cpt sample, sft sft_sample, rm reward_sample, rs sft_sample).
    data: dict[str, str] = field(default_factory=dict)
    # Overrides given to one stage only, e.g. {"rm": ["training.train_iters=30"]}.
    stage_overrides: dict[str, list[str]] = field(default_factory=dict)
    eval_overrides: list[str] = field(default_factory=lambda: ["+eval=suite"])

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in STEP_NAMES]
        if unknown:
            raise ValueError(f"pipeline.steps: unknown {unknown}; expected some of {STEP_NAMES}")


# How saves store the distributed optimizer's state; see training/checkpointing.py.
OPTIMIZER_FORMATS = ("dp_reshardable", "fully_reshardable")


def check_optimizer_format(value: str, key: str = "checkpoint.optimizer_format") -> str:
    """`value` if it is a known format, else a ValueError that names `key`."""
    if value not in OPTIMIZER_FORMATS:
        raise ValueError(f"{key}={value!r}: expected one of {OPTIMIZER_FORMATS}")
    return value


# What a start does with a checkpoint whose files do not match its manifest.json.
ON_CORRUPT = ("fallback", "refuse")


@dataclass
class CheckpointConfig:
    """`conf/checkpoint/*.yaml`. Saves go to `run_dir/checkpoints`."""

    load: str | None = None  # weights-only start (converted HF / previous stage); no resume
    # Iterations between checkpoints; 0: none on the way. One is also written at the end, at
    # `training.exit_after` and on preemption.
    save_interval: int = 1000
    keep_last: int | None = None  # prune older iter_* folders (None or 0: keep all)
    optimizer_format: str = "dp_reshardable"  # how saves store the optimizer (checkpointing.py)
    # A checkpoint whose files fail their checksums (checkpoint/verified.py): `fallback` warns
    # naming the file and reads the previous complete one; `refuse` stops naming the file.
    on_corrupt: str = "fallback"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the key."""
        check_optimizer_format(self.optimizer_format)
        if self.save_interval < 0:
            raise ValueError(
                f"checkpoint.save_interval={self.save_interval} must be >= 0 (0: only at the end)"
            )
        if self.keep_last is not None and self.keep_last < 0:
            raise ValueError(
                f"checkpoint.keep_last={self.keep_last} must be >= 1 (null or 0: keep all)"
            )
        if self.on_corrupt not in ON_CORRUPT:
            raise ValueError(f"checkpoint.on_corrupt={self.on_corrupt!r}: expected {ON_CORRUPT}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    precision: str = "bf16"
    seed: int = 1234
    run_dir: str = "runs/default"
    # The eval group. Its shape depends on the task kind (or a suite of them), so Hydra composes
    # it untyped; load.validate replaces it with config/eval.py's dataclasses.
    eval: Any = None
    stage: str | None = None  # set by conf/stage/<name>.yaml: a key of stages.STAGES
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    data: Any = None  # the stage's files: validated by its data schema (stages STAGES)
    rm: RMConfig = field(default_factory=RMConfig)  # conf/stage/rm.yaml
    rs: RSConfig = field(default_factory=RSConfig)  # conf/stage/rs.yaml
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)  # `chimed pipeline` only

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: expected one of {PRECISIONS}")
