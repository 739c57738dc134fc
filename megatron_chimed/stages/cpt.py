"""Continued pre-training (paper section 2.1): next-token prediction on CMD (pre-train)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf

from megatron_chimed.data.pretrain import PretrainDataConfig, build_pretrain_datasets
from megatron_chimed.training.loss import cross_entropy_fusion, masked_lm_loss
from megatron_chimed.training.stage import Datasets, ForwardStepResult, Stage


class PretrainStage(Stage):
    def datasets(self, num_samples: tuple[int, int, int]) -> Datasets:
        data = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(PretrainDataConfig), self.cfg.data or {})
        )
        # Megatron's index cache goes under the run, never beside the user's (maybe read-only)
        # data, unless data.cache_dir says otherwise.
        train, valid, test = build_pretrain_datasets(
            data,
            self.tokenizer,
            self.cfg.training.seq_length,
            self.cfg.seed,
            num_samples,
            Path(self.cfg.run_dir) / "cache" / "index",
        )
        return train, valid, test

    def forward_step(self, data_iterator: Iterator, model: torch.nn.Module) -> ForwardStepResult:
        batch = next(data_iterator)
        device = next(model.parameters()).device
        # non_blocking: a blocking copy would wait for all the GPU work queued so far, once per
        # micro-batch (the loop pins the loader's batches on GPUs).
        tokens, labels, loss_mask, position_ids = (
            batch[k].to(device, non_blocking=True)
            for k in ("tokens", "labels", "loss_mask", "position_ids")
        )
        logits = model(tokens, position_ids, None)
        return logits, partial(
            masked_lm_loss,
            labels=labels,
            loss_mask=loss_mask,
            true_vocab_size=self.cfg.model.vocab_size,
            fusion=cross_entropy_fusion(model),
        )
