"""The reward model: the Ziya GPT trunk with a scalar value head (hidden -> 1).

The head reads the final hidden state (after the final RMSNorm) at each sequence's last real
token. After that norm the hidden state is whole and identical on every TP rank (row-parallel
layers all-reduce their output), so the head is a plain replicated `torch.nn.Linear`, not a
vocab-parallel layer: every TP rank computes the same scores and the same head gradient, and
megatron treats the weight like a norm weight (no TP split, counted once in the grad norm).

Checkpoint keys are the GPTModel's, minus `output_layer.weight`, plus `value_head.weight`: the
head is an attribute of the GPTModel itself, so an SFT checkpoint loads into the trunk unchanged
(`init_from_sft`) and the converter's GPT mapping applies as is.
"""

from __future__ import annotations

import os

import torch
from megatron.core.transformer.module import Float16Module, MegatronModule

from megatron_chimed.checkpoint.weights import load_model_weights
from megatron_chimed.model import ModelConfig, ParallelConfig, build_model, unwrap

VALUE_HEAD = "value_head"
HEAD_SEED = 20231111  # the head starts the same on every rank, whatever each rank's RNG did


class RewardModel(MegatronModule):
    """`forward(tokens, position_ids, attention_mask, last_index) -> scores [N]`.

    A wrapper in the manner of Float16Module (`self.module` is the GPTModel), so `unwrap()`
    reaches the GPTModel and checkpoints carry the GPTModel's own key names.
    """

    def __init__(self, gpt: torch.nn.Module) -> None:
        super().__init__(gpt.config)
        # An RM never computes vocab logits: drop the vocab projection (1.5% of a 13B model's
        # weights) and take GPTModel's not-last-stage path, which returns the decoder output;
        # the decoder still applies its final RMSNorm (it has its own post_process flag).
        del gpt.output_layer
        gpt.post_process = False
        head = torch.nn.Linear(gpt.config.hidden_size, 1, bias=False)
        generator = torch.Generator().manual_seed(HEAD_SEED)
        torch.nn.init.normal_(head.weight, std=gpt.config.init_method_std, generator=generator)
        # The trunk is already on its device (build_model places it): a head left on the host
        # would fail at the first scoring forward on a GPU. Initialised on the host first, so
        # its values do not depend on the device's RNG.
        device = next(gpt.parameters()).device
        gpt.add_module(VALUE_HEAD, head.to(device=device, dtype=gpt.config.params_dtype))
        self.module = gpt

    def forward(
        self,
        tokens: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        last_index: torch.Tensor,
    ) -> torch.Tensor:
        hidden = self.module(tokens, position_ids, attention_mask)  # [S, N, H]
        if self.config.sequence_parallel:
            from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

            # Every rank then holds the whole sequence and computes the full head gradient
            # itself, so the backward of the gather only splits (no reduce-scatter).
            hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        last = hidden[last_index, torch.arange(hidden.size(1), device=hidden.device)]  # [N, H]
        return getattr(self.module, VALUE_HEAD)(last).squeeze(-1)

    def set_input_tensor(self, input_tensor: torch.Tensor | None) -> None:
        self.module.set_input_tensor(input_tensor)

    def sharded_state_dict(self, prefix: str = "", *args, **kwargs):
        return self.module.sharded_state_dict(prefix, *args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True):
        return self.module.load_state_dict(state_dict, strict=strict)


def build_reward_model(
    model: ModelConfig,
    parallel: ParallelConfig,
    precision: str = "fp32",
    seq_length: int | None = None,
) -> torch.nn.Module:
    """This rank's shard of the RM, with a fresh head; Float16Module-wrapped in bf16/fp16 as
    `build_model` does (scores come back in fp32)."""
    reward = RewardModel(unwrap(build_model(model, parallel, precision, seq_length)))
    if precision in ("bf16", "fp16"):
        return Float16Module(reward.config, reward)
    return reward


def init_from_sft(model: torch.nn.Module, checkpoint: str | os.PathLike) -> dict:
    """Load a GPT checkpoint (SFT, or converted) into the trunk; the value head stays fresh.
    Returns the checkpoint's chimed.json.

    The shared loader requests every weight of the module it is given, and an SFT checkpoint
    has no value head: so the head is taken off while it loads. The checkpoint's vocab
    projection is not requested, so it is not read.
    """
    gpt = unwrap(model)
    head = gpt._modules.pop(VALUE_HEAD)
    try:
        return load_model_weights(gpt, checkpoint)
    finally:
        gpt.add_module(VALUE_HEAD, head)
