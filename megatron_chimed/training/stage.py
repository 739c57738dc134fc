"""The plug-in interface of the shared training loop, and the registry of stages by name.

A stage is a small class; the loop (training/loop.py) does everything else (DDP, optimizer,
schedule, accumulation, validation, logging, checkpoints, preemption):

    class MyStage(Stage):
        def datasets(self, num_samples):            # (train, valid, test) map-style datasets
            ...                                     # of dicts of tensors; valid/test may be None
        def forward_step(self, data_iterator, model):
            batch = next(data_iterator)             # one micro-batch (dict of stacked tensors)
            logits = model(batch["tokens"], batch["position_ids"], None)
            return logits, partial(masked_lm_loss, labels=..., loss_mask=...,
                                   true_vocab_size=self.cfg.model.vocab_size)
        def build_model(self):                      # optional: e.g. a reward model's value head
            ...

`forward_step` is megatron's: it returns (output_tensor, loss_func) and `loss_func(output)`
returns (loss sum, token count, {name: tensor([sum, count])}) as `loss.masked_lm_loss` does;
every reported name is logged as sum/count over the global batch. The loop reads the train
dataset in order from the number of samples already consumed (so resume, at any DP size,
continues the same sample order): a stage shuffles inside its dataset (GPTDataset does).

Register a stage by adding a row to megatron_chimed/stages STAGES and a
`conf/stage/<name>.yaml` that sets its hyper-parameters; `stage=<name>` selects both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from megatron_chimed.config.schema import OptimConfig, RunConfig, TrainingConfig
    from megatron_chimed.tokenizer import Tokenizer

Datasets = tuple[Any, Any | None, Any | None]
ForwardStepResult = tuple[torch.Tensor, Callable[[torch.Tensor], tuple]]


class Stage:
    """Base class: a stage supplies its data, its forward step and optionally its model."""

    # The HF class its checkpoints export to (megatron_chimed/convert/mapping.py).
    hf_architecture = "LlamaForCausalLM"

    def __init__(self, cfg: RunConfig, tokenizer: Tokenizer) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer

    def build_model(self) -> torch.nn.Module:
        """This rank's model shard; the default is the Ziya GPTModel."""
        from megatron_chimed.model import build_model

        cfg = self.cfg
        return build_model(cfg.model, cfg.parallel, cfg.precision, cfg.training.seq_length)

    def schedule(self) -> tuple[TrainingConfig, OptimConfig]:
        """The training and optim sections this stage trains with: the configured ones, or
        copies a stage derives from its data (the reward model's epochs). A stage never
        changes `cfg` itself: the loop uses what this returns."""
        return self.cfg.training, self.cfg.optim

    def load_weights(self, model: torch.nn.Module, path: str) -> dict:
        """Weights-only start from `checkpoint.load` (a converted or previous-stage checkpoint).
        A stage whose model differs from the checkpoint's (the reward head) overrides this."""
        from megatron_chimed.checkpoint.weights import load_model_weights

        return load_model_weights(model, path)

    def after_training(self, model: torch.nn.Module) -> None:
        """Called once training reached its last iteration (not after a preemption exit)."""

    def datasets(self, num_samples: tuple[int, int, int]) -> Datasets:
        """Train/valid/test datasets with at least `num_samples` samples each."""
        raise NotImplementedError

    def forward_step(self, data_iterator: Iterator, model: torch.nn.Module) -> ForwardStepResult:
        raise NotImplementedError
