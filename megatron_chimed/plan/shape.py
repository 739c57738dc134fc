"""What a composed run config means for one GPU: `RunShape`, the numbers the planner works from.

The planner imports no torch (launch/submit.py runs it on a Slurm login node), so every choice
the builder makes at run time (model/builder.py, training/optim.py) is restated here from the
config: the layer spec, the attention kernel, which fused kernels exist, the DDP bucket size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from megatron_chimed.config.schema import ModelConfig, RunConfig

# Bytes per element of each precision (config/schema.py PRECISIONS).
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# The paper's reward data ranks K=4 answers per prompt (doctor > GPT-4 > GPT-3.5 > BenTsao,
# conf/stage/rm.yaml); an RM micro-batch of B prompts is B x K forwards (stages/rm.py).
PAPER_RM_RESPONSES = 4


@dataclass(frozen=True)
class RunShape:
    model: ModelConfig
    tp: int
    sequence_parallel: bool
    distributed_optimizer: bool
    dp: int
    nodes: int
    seq: int
    micro_batch: int  # sequences in one micro-batch forward (RM: prompts x answers)
    global_batch: int  # sequences per optimizer step
    precision: str
    impl: str  # "transformer_engine" | "local": the layer spec (model/builder.py)
    stores_scores: bool  # the attention kernel keeps the s x s probabilities (not flash/fused)
    fused_kernels: bool  # GPU only: megatron's fused SwiGLU, TE's fused RMSNorm
    value_head: bool  # the RM: no vocab projection, a hidden -> 1 head (reward/model.py)
    train_iters: int
    stage: str | None = None
    per_prompt: int = 1  # RM: answers forwarded per prompt (micro_batch counts them)
    # parallel.recompute_granularity ("none" for null), and the DDP overlap settings.
    recompute: str = "none"
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = False
    bucket: int | None = None  # parallel.bucket_size (None: megatron's default)

    @property
    def world(self) -> int:
        return self.tp * self.dp

    @property
    def vocab_padded(self) -> int:
        return self.model.padded_vocab_size(self.tp)

    @property
    def num_microbatches(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp)

    @property
    def act_bytes(self) -> int:
        """Activations are in the params' dtype (Float16Module casts the embedding output)."""
        return DTYPE_BYTES[self.precision]

    @property
    def bucket_size(self) -> int | None:
        """megatron DDP's bucket size in elements with parallel.overlap_grad_reduce:
        parallel.bucket_size, or megatron's max(40M, 1M x DP); one bucket without it
        (megatron/core/distributed/distributed_data_parallel.py). The CPU shape (tests) keeps
        one bucket: its tiny models fit in one either way."""
        if not (self.fused_kernels and self.overlap_grad_reduce):
            return None
        return self.bucket or max(40_000_000, 1_000_000 * self.dp)

    def replace(self, **changes: object) -> RunShape:
        return dataclasses.replace(self, **changes)


def world_size(cfg: RunConfig) -> int:
    """Ranks of the job as the launcher starts it (cli.py `_world_for`, times the nodes)."""
    launcher = cfg.launcher
    if launcher.kind == "local":
        return cfg.parallel.tensor_model_parallel_size
    return launcher.nodes * launcher.nproc_per_node


def run_shape(cfg: RunConfig, responses: int = PAPER_RM_RESPONSES, gpu: bool = True) -> RunShape:
    """The shape of `cfg` on GPUs (`gpu=False`: as it runs on the CPU, for the tests).

    Raises ValueError naming the key when the world, the batch or the model cannot be split.
    """
    tp = cfg.parallel.tensor_model_parallel_size
    world = world_size(cfg)
    if world % tp:
        raise ValueError(
            f"launcher: {world} ranks are not divisible by parallel.tensor_model_parallel_size={tp}"
        )
    dp = world // tp
    cfg.model.validate(tp, cfg.training.seq_length)
    cfg.training.num_microbatches(dp)  # raises naming training.global_batch_size
    impl = cfg.model.transformer_impl
    # `auto` is Transformer Engine wherever CUDA and TE exist (model/builder.py): on the GPU
    # nodes a plan is for, that is TE; on the CPU it is always the local spec.
    impl = "local" if impl == "local" or not gpu else "transformer_engine"
    per_prompt = 1
    if cfg.stage == "rm":
        if responses < 2:
            raise ValueError(f"--responses {responses}: a ranking has at least 2 answers")
        per_prompt = 2 if cfg.rm.pairing == "binary" else responses
    return RunShape(
        model=cfg.model,
        tp=tp,
        sequence_parallel=cfg.parallel.sequence_parallel and tp > 1,
        distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        dp=dp,
        nodes=cfg.launcher.nodes,
        seq=cfg.training.seq_length,
        micro_batch=cfg.training.micro_batch_size * per_prompt,
        global_batch=cfg.training.global_batch_size * per_prompt,
        precision=cfg.precision,
        impl=impl,
        # TE's flash / cuDNN fused kernels keep only softmax statistics; megatron's unfused
        # and local attention keep the probabilities (model/builder.py `_attention_backend`).
        stores_scores=impl == "local" or cfg.model.attention_backend in ("unfused", "local"),
        fused_kernels=gpu,
        value_head=cfg.stage == "rm",
        train_iters=cfg.training.train_iters,
        stage=cfg.stage,
        per_prompt=per_prompt,
        recompute=cfg.parallel.recompute_granularity or "none",
        overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        overlap_param_gather=cfg.parallel.overlap_param_gather
        and cfg.parallel.use_distributed_optimizer,
        bucket=cfg.parallel.bucket_size,
    )
