"""Turn a ModelConfig into a megatron-core GPTModel, on GPUs (Transformer Engine) or the CPU."""

from __future__ import annotations

import functools
import logging
from typing import Literal

import torch
import torch.nn.functional as F

from megatron_chimed.config.schema import ModelConfig, ParallelConfig

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
TransformerImpl = Literal["auto", "local", "transformer_engine"]
# The one precision -> dtype map (the names are config/schema.py PRECISIONS).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def have_transformer_engine() -> bool:
    from megatron.core.extensions.transformer_engine import HAVE_TE

    return bool(HAVE_TE)


@functools.cache
def _gpu_stack_problems() -> tuple[str, ...]:
    from megatron_chimed.platform.gpu_versions import check_gpu_stack

    return tuple(check_gpu_stack())


def _checked_transformer_engine() -> str:
    """TE, once its stack is known to work: a TE / flash-attn pair that cannot work together
    is an error naming both versions now, not a slow (or attention-less) job days later."""
    problems = _gpu_stack_problems()
    if problems:
        raise RuntimeError("GPU software stack: " + " ".join(problems))
    return "transformer_engine"


def resolve_transformer_impl(requested: str) -> str:
    """Pick the layer spec. `auto` means TE where CUDA and TE exist, else the local spec.

    An explicit `transformer_engine` never falls back: a GPU job that silently lost flash
    attention would run, slowly and with a different memory profile, for days.
    """
    cuda, te = torch.cuda.is_available(), have_transformer_engine()
    if requested == "transformer_engine":
        if not cuda:
            raise RuntimeError("model.transformer_impl=transformer_engine needs CUDA; none found")
        if not te:
            raise RuntimeError(
                "model.transformer_impl=transformer_engine but Transformer Engine is not "
                "installed: `pip install .[gpu]` (or set model.transformer_impl=local)"
            )
        return _checked_transformer_engine()
    if requested == "local":
        return "local"
    if requested != "auto":
        raise ValueError(
            f"model.transformer_impl={requested!r}: expected auto, local or transformer_engine"
        )
    if cuda and not te:
        log.warning(
            "CUDA is available but Transformer Engine is not installed: using the local "
            "megatron-core spec WITHOUT flash attention. Install it with `pip install .[gpu]`."
        )
    return _checked_transformer_engine() if cuda and te else "local"


def have_grad_accum_fusion_kernel() -> bool:
    """Apex's fused_weight_gradient_mlp_cuda: megatron's ColumnParallelLinear needs it for
    gradient_accumulation_fusion, and GPTModel's output layer is one under either layer spec
    (TE's own linears fuse without it)."""
    from megatron.core.tensor_parallel import layers

    return bool(layers._grad_accum_fusion_available)


_said: set[str] = set()


def say_once(message: str) -> None:
    """Log `message` once per process, at rank 0 only."""
    import torch.distributed as dist

    if message in _said:
        return
    _said.add(message)
    if not dist.is_initialized() or dist.get_rank() == 0:
        log.info(message)


def resolve_gradient_accumulation_fusion(parallel: ParallelConfig) -> bool:
    """`parallel.gradient_accumulation_fusion` as it can run here: off on the CPU (a CUDA
    kernel), said once; on a GPU without the kernel an error, never a silent fallback."""
    if not parallel.gradient_accumulation_fusion:
        return False
    if not torch.cuda.is_available():
        say_once("CPU run: parallel.gradient_accumulation_fusion is off (a CUDA kernel)")
        return False
    if not have_grad_accum_fusion_kernel():
        raise RuntimeError(
            "parallel.gradient_accumulation_fusion=true needs Apex's fused_weight_gradient_mlp_cuda"
            " (megatron's output layer uses it): build Apex with --cpp_ext --cuda_ext (README) or "
            "set parallel.gradient_accumulation_fusion=false"
        )
    return True


def resolve_cross_entropy_fusion(parallel: ParallelConfig, precision: str) -> str | None:
    """The fused cross entropy that runs here (`native` | `te`), or None for megatron's
    unfused one. Off on the CPU (CUDA kernels), and for `native` outside bf16 (its backward
    casts the logit gradient to bf16), each said once; `te` without TE on a GPU is an error."""
    if not parallel.cross_entropy_loss_fusion:
        return None
    impl = parallel.cross_entropy_fusion_impl
    if not torch.cuda.is_available():
        say_once("CPU run: parallel.cross_entropy_loss_fusion is off (CUDA kernels); the unfused "
                 "cross entropy computes the same loss")  # fmt: skip
        return None
    if impl == "native" and precision != "bf16":
        say_once(f"precision={precision}: parallel.cross_entropy_loss_fusion is off (megatron's "
                 "native fused cross entropy returns bf16 gradients; "
                 "parallel.cross_entropy_fusion_impl=te keeps the precision)")  # fmt: skip
        return None
    if impl == "te" and not have_transformer_engine():
        raise RuntimeError(
            "parallel.cross_entropy_fusion_impl=te needs Transformer Engine: `pip install "
            ".[gpu]`, or set parallel.cross_entropy_fusion_impl=native"
        )
    return impl


def transformer_config(
    model: ModelConfig, parallel: ParallelConfig, precision: Precision = "fp32"
) -> TransformerConfig:  # noqa: F821
    """The megatron TransformerConfig for a LLaMA shape (SwiGLU, RMSNorm, RoPE, no biases)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    if precision not in DTYPES:
        raise ValueError(f"precision={precision!r}: expected one of {sorted(DTYPES)}")
    tp = parallel.tensor_model_parallel_size
    model.validate(tensor_parallel=tp)
    parallel.validate()
    layers = parallel.recompute_num_layers
    if layers is not None and layers > model.num_layers:
        raise ValueError(
            f"parallel.recompute_num_layers={layers} is more than "
            f"model.num_layers={model.num_layers}"
        )
    impl = resolve_transformer_impl(model.transformer_impl)
    on_gpu = torch.cuda.is_available()
    sequence_parallel = parallel.sequence_parallel and tp > 1
    if parallel.tp_comm_overlap and impl != "transformer_engine":
        raise ValueError(
            "parallel.tp_comm_overlap=true needs the Transformer Engine spec (its userbuffers "
            "overlap the TP communication; model.transformer_impl resolved to local here): "
            "set parallel.tp_comm_overlap=false"
        )
    if sequence_parallel and impl != "transformer_engine":
        raise ValueError(
            "parallel.sequence_parallel=true needs the Transformer Engine spec (megatron's torch "
            "RMSNorm fallback cannot split the sequence); set parallel.sequence_parallel=false"
        )
    cross_entropy = resolve_cross_entropy_fusion(parallel, precision)
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,  # SwiGLU: fc1 holds [gate; up], silu(gate) * up
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_method_std,
        tensor_model_parallel_size=tp,
        sequence_parallel=sequence_parallel,
        params_dtype=DTYPES[precision],
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        attention_backend=_attention_backend(model, impl),
        # The fused kernels are CUDA-only; on the CPU every one of them must be off.
        use_cpu_initialization=not on_gpu,
        gradient_accumulation_fusion=resolve_gradient_accumulation_fusion(parallel),
        bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        masked_softmax_fusion=on_gpu,
        apply_rope_fusion=on_gpu and impl == "transformer_engine",
        persist_layer_norm=False,
        # Read by GPTModel's own loss and by ours (training/loss.py `cross_entropy_fusion`).
        cross_entropy_loss_fusion=cross_entropy is not None,
        cross_entropy_fusion_impl=cross_entropy or "native",
        # TE userbuffers, set up before the model is built (model/userbuffers.py).
        tp_comm_overlap=parallel.tp_comm_overlap,
        # Losses are per token (training/loss.py): megatron's DDP sums gradients and
        # finalize_model_grads divides them by the global batch's loss-token count.
        calculate_per_token_loss=True,
        # Activation recompute, validated by ParallelConfig (selective: core attention only,
        # megatron's default recompute_modules).
        recompute_granularity=parallel.recompute_granularity,
        recompute_method=parallel.recompute_method,
        recompute_num_layers=parallel.recompute_num_layers,
    )


def _attention_backend(model: ModelConfig, impl: str) -> AttnBackend:  # noqa: F821
    """megatron's AttnBackend for `model.attention_backend` under the resolved spec."""
    from megatron.core.transformer.enums import AttnBackend

    if impl != "transformer_engine":
        # The local spec has one attention implementation; asking it for a TE kernel is a
        # config error, not something to drop silently.
        if model.attention_backend not in ("auto", "local"):
            raise ValueError(
                f"model.attention_backend={model.attention_backend} needs the Transformer "
                "Engine spec (model.transformer_impl=transformer_engine); the local spec runs "
                "megatron's own attention: use auto or local"
            )
        return AttnBackend.local
    return AttnBackend[model.attention_backend]


def layer_spec(impl: str) -> ModuleSpec:  # noqa: F821
    from megatron.core.models.gpt import gpt_layer_specs

    if impl == "transformer_engine":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")


def build_model(
    model: ModelConfig,
    parallel: ParallelConfig,
    precision: Precision = "fp32",
    seq_length: int | None = None,
) -> torch.nn.Module:
    """Build this rank's shard of the GPT model (megatron parallel state must be initialised).

    In bf16/fp16 the model is wrapped in megatron's Float16Module, as Megatron-LM does, so that
    every weight (norms included) is half precision and the logits come back in fp32.
    """
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.module import Float16Module

    model.validate(parallel.tensor_model_parallel_size, seq_length)
    config = transformer_config(model, parallel, precision)
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(resolve_transformer_impl(model.transformer_impl)),
        vocab_size=model.padded_vocab_size(parallel.tensor_model_parallel_size),
        max_sequence_length=model.max_position_embeddings,
        position_embedding_type="rope",
        rotary_base=int(model.rotary_base),
        rotary_percent=1.0,
        share_embeddings_and_output_weights=not model.untie_embeddings_and_output_weights,
        pre_process=True,
        post_process=True,
    )
    if torch.cuda.is_available():
        gpt.cuda(torch.cuda.current_device())
    if precision in ("bf16", "fp16"):
        return Float16Module(config, gpt)
    return gpt


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(module, "module"):
        module = module.module
    return module
