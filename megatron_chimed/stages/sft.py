"""Supervised fine-tuning (paper section 2.2): packed prompt-response rows, loss on responses.

The data (readers, chat template, packing, cache) lives in `megatron_chimed/data/sft/`; this
stage feeds its rows to the model. In `isolated` packing each sample attends only to itself:
with the local spec (CPU) through a block-diagonal causal mask, with Transformer Engine (GPU)
through THD `PackedSeqParams`, the whole micro-batch laid out as one long packed sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch

from megatron_chimed.checkpoint import layout
from megatron_chimed.config import RunConfig
from megatron_chimed.data.sft import (
    Epochs,
    block_causal_mask,
    load_data_config,
    packed_seq_params,
    packed_sft_dataset,
)
from megatron_chimed.model import resolve_transformer_impl
from megatron_chimed.tokenizer import Tokenizer
from megatron_chimed.training.loss import cross_entropy_fusion, masked_lm_loss
from megatron_chimed.training.stage import Datasets, ForwardStepResult, Stage


class SFTStage(Stage):
    def __init__(self, cfg: RunConfig, tokenizer: Tokenizer) -> None:
        super().__init__(cfg, tokenizer)
        resuming = layout.read_latest(Path(cfg.run_dir) / "checkpoints") is not None
        if not cfg.checkpoint.load and not resuming:
            raise ValueError(
                "checkpoint.load is not set: SFT starts from the CPT run's checkpoints/ folder "
                "or a converted Ziya checkpoint, not from random weights"
            )
        self.data = load_data_config(cfg.data)
        # One sequence length for model and data: the training config's.
        self.data.seq_length = cfg.training.seq_length
        # How forward_step lays out a packed row, fixed here (not when the data is built).
        self.isolated = self.data.packing == "isolated"
        self.thd = resolve_transformer_impl(cfg.model.transformer_impl) == "transformer_engine"
        if self.isolated and not self.thd and torch.cuda.is_available():
            # The local spec's fused softmax kernel applies its own causal mask and ignores the
            # block mask: samples would silently attend to each other.
            raise ValueError(
                "data.packing=isolated on GPU needs model.transformer_impl=transformer_engine "
                "(THD packed sequences); or use data.packing=concat"
            )

    def datasets(self, num_samples: tuple[int, int, int]) -> Datasets:
        # The packed cache goes under the run unless data.cache_dir names a shared one.
        rows = packed_sft_dataset(
            self.data, self.tokenizer, Path(self.cfg.run_dir) / "cache" / "sft"
        )
        return Epochs(rows, num_samples[0], self.data.seed), None, None

    def forward_step(self, data_iterator: Iterator, model: torch.nn.Module) -> ForwardStepResult:
        batch = next(data_iterator)
        device = next(model.parameters()).device
        # non_blocking: a blocking copy waits for the GPU work queued so far (see cpt.py).
        tokens, labels, loss_mask, position_ids, cu_seqlens = (
            batch[k].to(device, non_blocking=True)
            for k in ("tokens", "labels", "loss_mask", "position_ids", "cu_seqlens")
        )
        seq_length = tokens.shape[1]
        if not self.isolated:
            logits = model(tokens, position_ids, None)
        elif self.thd:
            flat = [t.reshape(1, -1) for t in (tokens, labels, loss_mask, position_ids)]
            tokens, labels, loss_mask, position_ids = flat
            # From the host copy: its boundaries and max length are read on the host, which on
            # the device would wait for the GPU, twice per micro-batch.
            params = packed_seq_params(batch["cu_seqlens"], seq_length)
            params.cu_seqlens_q = params.cu_seqlens_kv = params.cu_seqlens_q.to(
                device, non_blocking=True
            )
            logits = model(tokens, position_ids, None, packed_seq_params=params)
        else:
            logits = model(tokens, position_ids, block_causal_mask(cu_seqlens, seq_length))
        return logits, partial(
            masked_lm_loss,
            labels=labels,
            loss_mask=loss_mask,
            true_vocab_size=self.cfg.model.vocab_size,
            fusion=cross_entropy_fusion(model),
        )
