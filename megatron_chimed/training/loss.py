"""The language-model loss every token-predicting stage shares (CPT, SFT, rejection sampling).

GPTModel's own loss (`model(..., labels=...)`) softmaxes over the *padded* vocabulary: the rows
added to make the embedding divisible by 128 x TP take part, so a converted checkpoint's loss
would differ from HF's. Here the model returns vocab-parallel logits (no labels), every column
whose global index is >= the tokenizer's true vocabulary is set to -inf on its TP rank, and
megatron's `vocab_parallel_cross_entropy` does the rest. The loss mask selects the tokens that
count: all but padding in CPT, the responses in SFT and RS (they pass their own mask).

The loss is returned as megatron's 3-tuple (sum, token count, report) and the loop sets
`calculate_per_token_loss`, so megatron divides the gradients by the number of loss tokens of
the whole global batch: the same average whatever the micro-batch or data-parallel sizes.
"""

from __future__ import annotations

import torch


def mask_padded_vocab(logits: torch.Tensor, true_vocab_size: int) -> torch.Tensor:
    """Set the padded vocabulary columns of this TP rank's logit shard to -inf."""
    from megatron.core import parallel_state

    shard = logits.size(-1)
    start = parallel_state.get_tensor_model_parallel_rank() * shard
    if start + shard <= true_vocab_size:
        return logits
    padded = torch.arange(start, start + shard, device=logits.device) >= true_vocab_size
    return logits.masked_fill(padded, float("-inf"))


def token_losses(logits: torch.Tensor, labels: torch.Tensor, true_vocab_size: int) -> torch.Tensor:
    """Per-token cross entropy [b, s] from vocab-parallel logits [b, s, v/tp]."""
    from megatron.core import tensor_parallel

    masked = mask_padded_vocab(logits.float(), true_vocab_size)
    return tensor_parallel.vocab_parallel_cross_entropy(masked, labels)


def masked_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, true_vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Megatron loss-function output: (sum of masked token losses, token count, report).

    The report holds [loss sum, tokens]; the loop sums it over micro-batches and data-parallel
    ranks and divides, which gives the exact token average of the global batch.
    """
    mask = loss_mask.float()
    loss_sum = (token_losses(logits, labels, true_vocab_size) * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum()])
    return loss_sum, num_tokens, {"lm loss": report}
