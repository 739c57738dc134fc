"""The language-model loss every token-predicting stage shares (CPT, SFT, rejection sampling).

GPTModel's own loss (`model(..., labels=...)`) softmaxes over the *padded* vocabulary: the rows
added to make the embedding divisible by 128 x TP take part, so a converted checkpoint's loss
would differ from HF's. Here the model returns vocab-parallel logits (no labels), every column
whose global index is >= the tokenizer's true vocabulary is set to -inf on its TP rank, and
megatron's `vocab_parallel_cross_entropy` does the rest. The loss mask selects the tokens that
count: all but padding in CPT, the responses in SFT and RS (they pass their own mask).

With `parallel.cross_entropy_loss_fusion` (GPU) the same masked logits go to megatron's fused
cross entropy (`native`) or Transformer Engine's (`te`) instead: the model's TransformerConfig
says which (`cross_entropy_fusion`), as it does for GPTModel's own loss. -inf columns are no
special case for any of them: exp(-inf - max) is 0 in the softmax sum and in the gradient.

The loss is returned as megatron's 3-tuple (sum, token count, report) and the loop sets
`calculate_per_token_loss`, so megatron divides the gradients by the number of loss tokens of
the whole global batch: the same average whatever the micro-batch or data-parallel sizes.
"""

from __future__ import annotations

import torch


def mask_padded_vocab(logits: torch.Tensor, true_vocab_size: int) -> torch.Tensor:
    """This TP rank's logit shard with its padded vocabulary columns set to -inf (a new
    tensor; `logits` itself when the shard has none)."""
    from megatron.core import parallel_state

    shard = logits.size(-1)
    start = parallel_state.get_tensor_model_parallel_rank() * shard
    if start + shard <= true_vocab_size:
        return logits
    # index_fill writes the few padded columns of its copy (a full-width boolean mask would be
    # read for every element, forward and backward).
    padded = torch.arange(max(true_vocab_size - start, 0), shard, device=logits.device)
    return logits.index_fill(-1, padded, float("-inf"))


def cross_entropy_fusion(model: torch.nn.Module) -> str | None:
    """The fused cross entropy `model` was built for (`native` | `te`), or None: its
    TransformerConfig's cross_entropy_loss_fusion / cross_entropy_fusion_impl (model/builder.py
    resolves them; off on the CPU)."""
    from megatron_chimed.model import unwrap

    config = unwrap(model).config
    return config.cross_entropy_fusion_impl if config.cross_entropy_loss_fusion else None


def token_losses(
    logits: torch.Tensor, labels: torch.Tensor, true_vocab_size: int, fusion: str | None = None
) -> torch.Tensor:
    """Per-token cross entropy [b, s] from vocab-parallel logits [b, s, v/tp], over the true
    vocabulary; `fusion` picks the kernel (see `cross_entropy_fusion`), None the unfused one."""
    from megatron.core import parallel_state, tensor_parallel

    masked = mask_padded_vocab(logits.float(), true_vocab_size)
    if masked is logits:
        # Every cross entropy below works in place on the logits it gets (megatron's subtracts
        # the max and exponentiates in them): ours to spoil, never the caller's tensor.
        masked = logits.clone()
    if fusion is None:
        return tensor_parallel.vocab_parallel_cross_entropy(masked, labels)
    group = parallel_state.get_tensor_model_parallel_group()
    if fusion == "native":
        from megatron.core.fusions.fused_cross_entropy import fused_vocab_parallel_cross_entropy

        return fused_vocab_parallel_cross_entropy(masked, labels, group)
    if fusion == "te":
        from megatron.core.extensions.transformer_engine import te_parallel_cross_entropy

        # TE's kernel wants contiguous rows; the loss comes back shaped as the labels.
        return te_parallel_cross_entropy(masked.contiguous(), labels.contiguous(), group)
    raise ValueError(f"cross entropy fusion {fusion!r}: expected None, native or te")


def masked_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    true_vocab_size: int,
    fusion: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Megatron loss-function output: (sum of masked token losses, token count, report).

    The report holds [loss sum, tokens]; the loop sums it over micro-batches and data-parallel
    ranks and divides, which gives the exact token average of the global batch. It stays on
    the device: the loop copies it to the host once per log interval, not once per step.
    """
    mask = loss_mask.float()
    loss_sum = (token_losses(logits, labels, true_vocab_size, fusion) * mask).sum()
    tokens = mask.sum()
    report = torch.stack([loss_sum.detach(), tokens])
    return loss_sum, tokens.to(torch.int), {"lm loss": report}
