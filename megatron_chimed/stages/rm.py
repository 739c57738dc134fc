"""The `rm` stage of the shared training loop (paper section 2.3 and appendix A).

Each sample is one prompt with its K ranked responses; a micro-batch of B prompts is B x K
forwards, and the loss is the mean over the global batch's pairs of
-log sigmoid(r_better - r_worse - margin). Validation reports the loss, pairwise accuracy and
full-ranking accuracy; `test_report` writes the same for the test split (if `data.test` is set)
as JSON.

The paper's schedule is given in epochs (2 epochs, batch 8, warm-up 3% of the steps but at
least 5), so the stage turns it into `training.train_iters` and `optim.warmup_iters` from the
size of the train split before the loop reads them. Validation covers the whole valid split
in global batches (`training.eval_iters` is set to match; a remainder smaller than one global
batch is left out).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import OmegaConf

from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.config.schema import OptimConfig, TrainingConfig
from megatron_chimed.config.stages import RMConfig
from megatron_chimed.data.sft import Epochs
from megatron_chimed.data.template import get_template
from megatron_chimed.reward.batch import (
    RankedExample,
    encode_records,
    example_tensors,
    sequence_multiple,
    stack_batch,
)
from megatron_chimed.reward.data import RewardDataConfig, read_ranked_jsonl
from megatron_chimed.reward.loss import pairwise_loss
from megatron_chimed.reward.model import build_reward_model, init_from_sft
from megatron_chimed.training.stage import Datasets, ForwardStepResult, Stage

if TYPE_CHECKING:
    from megatron_chimed.config import RunConfig
    from megatron_chimed.tokenizer import Tokenizer

log = logging.getLogger(__name__)

TEST_REPORT = "rm_test_report.json"


def epoch_schedule(cfg: RMConfig, train_prompts: int, global_batch: int) -> tuple[int, int]:
    """(train_iters, warmup_iters) for `cfg.epochs` passes over `train_prompts` prompts."""
    iters = max(1, math.ceil(cfg.epochs * train_prompts / global_batch))
    return iters, max(cfg.min_warmup_iters, math.ceil(cfg.warmup_fraction * iters))


def rm_schedule(
    rm: RMConfig,
    training: TrainingConfig,
    optim: OptimConfig,
    train_prompts: int,
    valid_prompts: int,
    valid_name: str = "data.valid",
) -> tuple[TrainingConfig, OptimConfig]:
    """The run's training and optim sections with the epoch-based schedule filled in (copies:
    the configured ones are left as they are): train and warm-up iterations from the epochs,
    and validation over every whole global batch of the valid split."""
    gb = training.global_batch_size
    train_iters, warmup_iters = epoch_schedule(rm, train_prompts, gb)
    eval_iters = valid_prompts // gb
    if training.eval_interval and not eval_iters:
        raise ValueError(
            f"{valid_name}: {valid_prompts} prompts, fewer than "
            f"training.global_batch_size={gb}: nothing to validate on"
        )
    return (
        dataclasses.replace(training, train_iters=train_iters, eval_iters=eval_iters),
        dataclasses.replace(optim, warmup_iters=warmup_iters),
    )


class RankedDataset(torch.utils.data.Dataset):
    """Encoded prompts as fixed-shape tensors; every prompt must have the same K (the loop's
    loader stacks a micro-batch)."""

    def __init__(self, examples: list[RankedExample], seq_length: int, pad_id: int, name: str):
        shapes = {(len(e.sequences), len(e.pairs)) for e in examples}
        if len(shapes) != 1:
            raise ValueError(
                f"{name}: prompts differ in their number of responses or pairs {sorted(shapes)}; "
                "a micro-batch needs the same K for every prompt"
            )
        self.examples, self.seq_length, self.pad_id = examples, seq_length, pad_id

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return example_tensors(self.examples[index], self.seq_length, self.pad_id)


class RewardStage(Stage):
    hf_architecture = "LlamaForSequenceClassification"

    def __init__(self, cfg: RunConfig, tokenizer: Tokenizer) -> None:
        super().__init__(cfg, tokenizer)
        merged = OmegaConf.merge(OmegaConf.structured(RewardDataConfig), cfg.data or {})
        self.data: RewardDataConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
        self.rm = cfg.rm
        # The test split is optional: a data set may come without one (or keep it aside).
        splits = ("train", "valid", "test") if self.data.test else ("train", "valid")
        if not self.data.test:
            log.info("rm: data.test is not set: no test split, no test metrics (%s)", TEST_REPORT)
        self.splits = {
            split: self._encode(
                split, self.rm.pairing if split == "train" else self.rm.eval_pairing
            )
            for split in splits
        }
        self._schedule = rm_schedule(
            self.rm,
            cfg.training,
            cfg.optim,
            len(self.splits["train"]),
            len(self.splits["valid"]),
            str(self.data.valid),
        )
        t, optim = self._schedule
        log.info(
            "rm: %d train prompts x %s epochs -> train_iters=%d, warmup_iters=%d",
            len(self.splits["train"]),
            self.rm.epochs,
            t.train_iters,
            optim.warmup_iters,
        )

    def schedule(self) -> tuple[TrainingConfig, OptimConfig]:
        return self._schedule

    def _encode(self, split: str, pairing: str) -> RankedDataset:
        path = getattr(self.data, split)
        if not path:
            raise ValueError(f"data.{split}: no file given (the rm stage needs train and valid)")
        records, _ = read_ranked_jsonl(path, self.data)
        seq_length = self.cfg.training.seq_length
        examples = encode_records(
            records,
            get_template(self.data.template),
            self.tokenizer,
            seq_length,
            pairing,
            self.data.instruction,
            name=path,
            on_duplicate=self.data.on_duplicate,
        )
        return RankedDataset(examples, seq_length, self.tokenizer.pad, path)

    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        return build_reward_model(cfg.model, cfg.parallel, cfg.precision, cfg.training.seq_length)

    def load_weights(self, model: torch.nn.Module, path: str) -> dict:
        """`checkpoint.load` is the SFT model: its trunk, and a fresh value head."""
        return init_from_sft(model, path)

    def datasets(self, num_samples: tuple[int, int, int]) -> Datasets:
        train = self.splits["train"]
        # Epoch 0 in a seeded order too: the files are sorted by whoever wrote them.
        order = np.random.default_rng(self.cfg.seed).permutation(len(train))
        shuffled = RankedDataset(
            [train.examples[i] for i in order], train.seq_length, train.pad_id, "train"
        )
        return (
            Epochs(shuffled, num_samples[0], self.cfg.seed),
            self.splits["valid"],
            self.splits.get("test"),
        )

    def forward_step(self, data_iterator: Iterator, model: torch.nn.Module) -> ForwardStepResult:
        batch = stack_batch(
            next(data_iterator), next(model.parameters()).device, sequence_multiple(model)
        )
        scores = model(batch.tokens, batch.position_ids, None, batch.last_index)
        return scores, partial(
            pairwise_loss, pairs=batch.pairs, group_sizes=batch.group_sizes, margin=self.rm.margin
        )

    def after_training(self, model: torch.nn.Module) -> None:
        self.test_report(model)

    @torch.no_grad()
    def test_report(self, model: torch.nn.Module) -> dict:
        """Loss, pairwise and full-ranking accuracy on the whole test split; rank 0 writes them
        to run_dir/rm_test_report.json. Every rank scores the whole split (a few hundred
        sequences), micro-batch by micro-batch. Without a test split: nothing (said at start)."""
        if "test" not in self.splits:
            return {}
        test = self.splits["test"]
        batch_size = self.cfg.training.micro_batch_size
        model.eval()
        totals: dict[str, torch.Tensor] = {}
        for start in range(0, len(test), batch_size):
            items = [test[i] for i in range(start, min(start + batch_size, len(test)))]
            output, loss_func = self.forward_step(
                iter([torch.utils.data.default_collate(items)]), model
            )
            for name, value in loss_func(output)[2].items():
                totals[name] = totals.get(name, 0) + value.double().cpu()
        model.train()
        report = {
            "split": str(self.data.test),
            "prompts": len(test),
            "pairing": self.rm.eval_pairing,
            **{name.replace(" ", "_"): (v[0] / v[1]).item() for name, v in totals.items()},
        }
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            target = Path(self.cfg.run_dir) / TEST_REPORT
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, json.dumps(report, indent=2, ensure_ascii=False))
        return report
