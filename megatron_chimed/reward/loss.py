"""Pairwise ranking loss and the RM's metrics, in the shared loop's loss-function form.

`loss_func(scores)` returns megatron's 3-tuple (sum, count, report): the loss is summed over
pairs and the loop divides by the pair count of the whole global batch, so the gradient is the
mean over pairs whatever the micro-batch and data-parallel sizes. Each report entry is
[sum, count] and is logged as sum / count over the global batch (or the whole eval split).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS, PAIR_ACCURACY, RANKING_ACCURACY = "rm loss", "pairwise accuracy", "ranking accuracy"


def pair_margins(scores: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """r_better - r_worse for each (better, worse) row of `pairs`."""
    return scores[pairs[:, 0]] - scores[pairs[:, 1]]


def rankings_correct(scores: torch.Tensor, group_sizes: list[int]) -> torch.Tensor:
    """How many prompts have all their responses scored in strictly decreasing rank order."""
    correct = [bool((group[:-1] > group[1:]).all()) for group in scores.split(group_sizes)]
    return torch.tensor(sum(correct), dtype=torch.float, device=scores.device)


def pairwise_loss(
    scores: torch.Tensor, pairs: torch.Tensor, group_sizes: list[int], margin: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """sum over pairs of -log sigmoid(r_better - r_worse - margin), the pair count, and a
    report of [sum, count] for the loss, pairwise accuracy and full-ranking accuracy."""
    scores = scores.float()
    margins = pair_margins(scores, pairs)
    loss_sum = -F.logsigmoid(margins - margin).sum()
    num_pairs = torch.tensor(len(pairs), dtype=torch.float, device=scores.device)
    prompts = torch.tensor(len(group_sizes), dtype=torch.float, device=scores.device)
    report = {
        LOSS: torch.stack([loss_sum.detach(), num_pairs]),
        PAIR_ACCURACY: torch.stack([(margins > 0).float().sum().detach(), num_pairs]),
        RANKING_ACCURACY: torch.stack([rankings_correct(scores.detach(), group_sizes), prompts]),
    }
    return loss_sum, num_pairs.to(torch.int), report
