"""Transformer Engine userbuffers for `parallel.tp_comm_overlap` (TP communication overlap).

With tp_comm_overlap, TE's linear layers split their GEMMs and run sequence parallelism's
all-gathers / reduce-scatters through pre-registered communication buffers ("userbuffers"),
overlapping them with the GEMM chunks. The buffers are process-wide and must exist before the
first TE layer is built; they are sized for one micro-batch, [seq_length x micro_batch, hidden],
as Megatron-LM's `initialize._initialize_tp_communicators` sizes them (TE's default per-layer
settings, bf16, bootstrapped over NCCL).

Only the training model uses them (its TransformerConfig carries tp_comm_overlap): generation
and evaluation build from their own ParallelConfig, where the option is off.
"""

from __future__ import annotations

import logging

from megatron_chimed.config.schema import ParallelConfig

log = logging.getLogger(__name__)

# The [tokens, hidden] shape the live buffers were made for (None: none made).
_shape: tuple[int, int] | None = None


def initialize_userbuffers(
    parallel: ParallelConfig, hidden_size: int, seq_length: int, micro_batch_size: int
) -> tuple[int, int] | None:
    """Make the userbuffers for this run's micro-batch shape (once per process and shape);
    return that shape, or None when `parallel.tp_comm_overlap` is off.

    Call on every rank after megatron's parallel state is initialised and before the model is
    built. Without Transformer Engine this is an error naming the option."""
    global _shape
    if not parallel.tp_comm_overlap:
        return None
    shape = (seq_length * micro_batch_size, hidden_size)
    if _shape == shape:
        return shape
    try:
        from transformer_engine.pytorch import module as te_module
    except ImportError as err:
        raise RuntimeError(
            "parallel.tp_comm_overlap=true needs Transformer Engine (`pip install .[gpu]`): "
            "set parallel.tp_comm_overlap=false"
        ) from err
    if _shape is not None:  # another shape in this process (an earlier stage): replace them
        te_module.base.destroy_ub()
    te_module.base.initialize_ub(
        shape=list(shape),
        tp_size=parallel.tensor_model_parallel_size,
        use_fp8=False,
        ub_cfgs={},
        bootstrap_backend="nccl",
    )
    _shape = shape
    log.info("TP communication overlap: userbuffers for %d tokens x %d hidden", *shape)
    return shape
