"""Activation memory of one micro-batch: every tensor autograd keeps for the backward pass.

The method is Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models" (arXiv 2205.05198), section 4 and Table 2, which Megatron-LM's
megatron/training/theoretical_memory_usage.py implements: count, per layer, the tensors saved
for backward, in bytes, with tensor parallelism dividing the tensors inside the TP regions and
sequence parallelism (SP) dividing the rest (the norm inputs and the inputs of QKV and FC1,
which megatron saves before the SP all-gather and gathers again in the backward). Their
per-layer total for a GPT layer, sbh(34 + 5as/h)/t, assumes GeLU with a 4h FFN and dropout
everywhere; the same count for our layer (model/builder.py: RMSNorm, RoPE, SwiGLU, no dropout)
gives the items below:

  TE spec (GPU): norm input + QKV input (each 2sbh/t with SP), Q, K, V (2sb(q + 2kv)/t), the
    attention output (2sbq/t, saved by the kernel and as the output projection's input), the
    softmax statistics of flash / cuDNN attention (4 bytes x b a s / t, fp32), norm input +
    FC1 input, the SwiGLU input (2sb 2f/t: megatron's fused SwiGLU recomputes the rest) and
    the FC2 input (2sbf/t): sb(16h + 6f)/t bytes for MHA, against sb(18h + 4f)/t in
    theoretical_memory_usage (GeLU MLP: 4f; dropout masks: 2h).
  local spec: torch's RMSNorm computes in fp32 and keeps its fp32 input and normalised output;
    megatron's unfused attention keeps the fp32 softmax and its bf16 copy (the 5as/h term of
    Korthikanti's formula, here 6as/h) and the QKV projection output, which the V view holds;
    on the CPU the SwiGLU is unfused and keeps its two halves' products. These terms were read
    off the saved-tensor hooks of tests/plan/test_activations.py, which checks the total.
    The TE terms are not measured on a CPU: `chimed gpu-check`'s slice reports the activation
    memory per layer of the 13B shape on a GPU to compare with.

Recompute modes are Megatron-LM's: `selective` (recompute_granularity=selective, the default
core_attn module) drops the softmax terms; `full` (uniform, one layer per checkpoint) keeps each
layer's input and, during the backward, one layer's activations again (Korthikanti section 4).
"""

from __future__ import annotations

from megatron_chimed.plan.shape import RunShape

RECOMPUTE_MODES = ("none", "selective", "full")
FP32 = 4
INT64 = 8
# The terms selective recompute drops (megatron recompute_modules=["core_attn"]).
SOFTMAX_TERMS = ("softmax probabilities (fp32)", "softmax probabilities copy", "softmax statistics")

Items = list[tuple[str, int]]


def _norm(shape: RunShape, where: str, rows: int) -> Items:
    """An RMSNorm's saved tensors and its output (the next linear's saved input)."""
    e, h = shape.act_bytes, shape.model.hidden_size
    if shape.impl == "transformer_engine":
        # TE's LayerNormLinear / RMSNorm keep the input, the normalised output and 1/rms.
        return [
            (f"{where} norm input", e * rows * h),
            (f"{where} norm output", e * rows * h),
            (f"{where} norm 1/rms (fp32)", FP32 * rows),
        ]
    # torch.nn.RMSNorm (megatron's local spec) upcasts to fp32 and keeps both fp32 tensors.
    return [
        (f"{where} norm input (fp32)", FP32 * rows * h),
        (f"{where} norm normalised (fp32)", FP32 * rows * h),
        (f"{where} norm 1/rms (fp32)", FP32 * rows),
        (f"{where} norm output", e * rows * h),
    ]


def layer_items(shape: RunShape) -> Items:
    """Bytes one decoder layer keeps for backward, per micro-batch on one GPU."""
    m, t, e = shape.model, shape.tp, shape.act_bytes
    tokens = shape.seq * shape.micro_batch
    sp_rows = tokens // t if shape.sequence_parallel else tokens
    heads = m.num_attention_heads // t
    q = m.num_attention_heads * m.head_dim // t
    kv = m.num_query_groups * m.head_dim // t
    f = m.ffn_hidden_size // t
    items = _norm(shape, "attention", sp_rows)
    if shape.stores_scores:
        # Local attention: RoPE makes new Q and K; V stays a view of the QKV output, which it
        # keeps whole. With GQA the K/V heads are repeated (new tensors) and the view dies.
        if kv == q:
            items += [
                ("QKV projection output", e * tokens * 3 * q),
                ("Q, K after RoPE", e * tokens * 2 * q),
            ]
        else:
            items += [("Q after RoPE, K and V repeated to all heads", e * tokens * 3 * q)]
        probs = heads * shape.micro_batch * shape.seq * shape.seq
        items.append(("softmax probabilities (fp32)", FP32 * probs))
        if e != FP32:
            items.append(("softmax probabilities copy", e * probs))
    else:
        items += [
            ("Q, K, V", e * tokens * (q + 2 * kv)),
            ("softmax statistics", FP32 * shape.micro_batch * heads * shape.seq),
        ]
    items.append(("attention output", e * tokens * q))
    items += _norm(shape, "MLP", sp_rows)
    items.append(("SwiGLU input (FC1 output)", e * tokens * 2 * f))
    if not shape.fused_kernels:
        # Unfused SwiGLU (megatron mlp.py `glu`): silu(gate) and up + offset are new tensors.
        items.append(("SwiGLU silu(gate), up", e * tokens * 2 * f))
    items.append(("FC2 input", e * tokens * f))
    return items


def other_items(shape: RunShape) -> Items:
    """What the embedding, the final norm and the head keep (the logits are a separate item)."""
    m, e = shape.model, shape.act_bytes
    tokens = shape.seq * shape.micro_batch
    sp_rows = tokens // shape.tp if shape.sequence_parallel else tokens
    items = [("token ids (embedding input, int64)", INT64 * tokens)]
    if shape.stores_scores:
        # One causal mask and RoPE's cos/sin pair (q and k each), shared by every layer.
        items += [
            ("causal mask (bool)", shape.seq * shape.seq),
            ("RoPE cos/sin", 4 * e * shape.seq * m.head_dim),
        ]
    norm = _norm(shape, "final", sp_rows)
    if shape.value_head:
        norm = norm[:-1]  # the head reads one token per sequence: its input is negligible
    return items + norm


def activation_bytes(shape: RunShape, recompute: str = "none") -> int:
    """Activations of one micro-batch at the peak (end of forward), logits excluded."""
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute {recompute!r}: expected one of {RECOMPUTE_MODES}")
    layer = layer_items(shape)
    per_layer = sum(b for _, b in layer)
    layers = shape.model.num_layers
    if recompute == "selective":
        per_layer -= sum(b for name, b in layer if name in SOFTMAX_TERMS)
        body = layers * per_layer
    elif recompute == "full":
        tokens = shape.seq * shape.micro_batch
        rows = tokens // shape.tp if shape.sequence_parallel else tokens
        # Each layer keeps its input; the one being recomputed holds its full set again.
        body = layers * shape.act_bytes * rows * shape.model.hidden_size + per_layer
    else:
        body = layers * per_layer
    return body + sum(b for _, b in other_items(shape))


def logits_bytes(shape: RunShape) -> tuple[int, int]:
    """(kept for backward, transient at the loss) for one micro-batch.

    Kept: the fp32 logits of micro_batch x seq x padded_vocab/TP, which megatron's vocab-
    parallel cross entropy turns into the softmax it saves. Transient: training/loss.py masks
    the padded vocabulary columns into a second fp32 copy on the rank that holds them, while
    the first is still referenced; without padded columns the bf16 logits Float16Module casts
    from are the second copy. The RM has a hidden -> 1 head: no logits.
    """
    if shape.value_head:
        return 0, 0
    elements = shape.seq * shape.micro_batch * shape.vocab_padded // shape.tp
    padded_columns = shape.vocab_padded != shape.model.vocab_size
    transient = FP32 if padded_columns else (shape.act_bytes if shape.act_bytes != FP32 else 0)
    return FP32 * elements, transient * elements


def megatron_reference_per_layer(shape: RunShape) -> int:
    """Megatron-LM's per-layer figure for this shape (theoretical_memory_usage.py
    `compute_activation_memory` with SP: sbh(18 + 4 ffn/h)/t), for comparison only."""
    m = shape.model
    sbh = shape.seq * shape.micro_batch * m.hidden_size
    return round(sbh * (18 + 4 * m.ffn_hidden_size / m.hidden_size) / shape.tp)
