"""Packed SFT rows through the tiny megatron GPTModel (fp32, TP=1, local spec); see
tests/stages/test_sft_isolation.py.

Three sample-data dialogues are packed into one row. Their per-sample losses are measured
(a) packed `isolated` (block-diagonal causal mask, restarted positions), (b) each sample alone,
(c) packed `concat` (one causal mask). Rank 0 writes the numbers to --out.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from megatron_chimed.data.sft.encode import Encoder, EncodeStats
from megatron_chimed.data.sft.packing import block_causal_mask, layout_row
from megatron_chimed.data.sft.readers import read_cmd_finetune, read_mc
from megatron_chimed.data.template import get_template
from megatron_chimed.model import ParallelConfig, build_model
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA, TINY
from megatron_chimed.tokenizer import ZiyaTokenizer
from megatron_chimed.training.loss import masked_lm_loss

SEQ = 256  # the tiny model's max_position_embeddings


def per_sample_losses(per_token: torch.Tensor, loss_mask: torch.Tensor, bounds: list[int]):
    """Mean loss over each segment's trained tokens."""
    return [
        float((per_token[a:b] * loss_mask[a:b]).sum() / loss_mask[a:b].sum())
        for a, b in zip(bounds[:-1], bounds[1:])
    ]


def packed_row(samples: list, pad: int, isolated: bool) -> dict[str, torch.Tensor]:
    """One packed row as a batch of one."""
    return {
        k: torch.from_numpy(v)[None] for k, v in layout_row(samples, SEQ, pad, isolated).items()
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True)
    args = ap.parse_args()

    layout = initialize(tensor_parallel=1, seed=1234)
    # A large init makes attention sharp, so that seeing another sample changes the loss a lot
    # and an isolation bug could not hide in near-uniform attention.
    model_cfg = dataclasses.replace(TINY, init_method_std=0.3, transformer_impl="local")
    model = build_model(model_cfg, ParallelConfig(tensor_model_parallel_size=1), "fp32").eval()

    tokenizer = ZiyaTokenizer(args.tokenizer)
    encoder = Encoder(get_template("ziya"), tokenizer, budget=SEQ + 1)
    # A dialogue turn with untrained history, then two QA pairs.
    records = [
        list(read_mc(SAMPLE_DATA / "sft" / "mc_dialogues.json", "mc"))[1],
        *read_cmd_finetune(SAMPLE_DATA / "sft" / "cmd_finetune.json", "cmd"),
    ]
    samples, responses, used = [], [], 0
    for record in records:
        ids, mask = encoder(record, None, EncodeStats())
        if used + len(ids) <= SEQ and len(samples) < 3:
            samples.append((np.array(ids), np.array(mask)))
            responses.append(encoder.template.encode_turns(tokenizer, record["messages"])[-1])
            used += len(ids)
    results: dict = {"lengths": [len(s[0]) for s in samples]}

    with torch.no_grad():
        alone = []
        for ids, mask in samples:
            tokens = torch.tensor(ids[None, :-1])
            labels = torch.tensor(ids[None, 1:])
            positions = torch.arange(tokens.shape[1])[None]
            per_token = model(tokens, positions, None, labels=labels)[0]
            alone += per_sample_losses(
                per_token, torch.tensor(mask[1:], dtype=torch.float32), [0, tokens.shape[1]]
            )
        results["alone"] = alone

        for mode in ("isolated", "concat"):
            row = packed_row(samples, tokenizer.pad, mode == "isolated")
            mask = block_causal_mask(row["cu_seqlens"], SEQ)
            per_token = model(row["tokens"], row["position_ids"], mask, labels=row["labels"])[0]
            starts = np.cumsum([0] + results["lengths"]).tolist()
            results[mode] = per_sample_losses(per_token, row["loss_mask"][0], starts)
            results[f"{mode}_cu_seqlens"] = row["cu_seqlens"][0].tolist()
            results[f"{mode}_positions_restart"] = [
                int(row["position_ids"][0, s]) for s in starts[:-1]
            ]

        # The SFT loss (shared masked loss + our mask) against a hand computation that only
        # knows where each sample's last response (with its `</s>`) sits in the row.
        row = packed_row(samples, tokenizer.pad, True)
        logits = model(
            row["tokens"], row["position_ids"], block_causal_mask(row["cu_seqlens"], SEQ)
        )
        loss_sum, count, _ = masked_lm_loss(
            logits, row["labels"], row["loss_mask"], TINY.vocab_size
        )
        stream = torch.cat([row["tokens"][0], row["labels"][0, -1:]])
        log_probs = torch.log_softmax(logits[0, :, : TINY.vocab_size].double(), dim=-1)
        ends = np.cumsum(results["lengths"])
        targets = [
            t for end, turn in zip(ends, responses) for t in range(end - len(turn.response), end)
        ]
        results["sft_loss"] = [float(loss_sum), int(count)]
        results["hand_loss"] = [
            -sum(float(log_probs[t - 1, stream[t]]) for t in targets),
            len(targets),
        ]
        results["eos_targets"] = sum(int(stream[t]) == tokenizer.eos for t in targets)

        # The default causal mask (None) and an explicit all-causal mask must agree, which shows
        # the model really uses the mask it is given.
        row = packed_row(samples, tokenizer.pad, False)
        default = model(row["tokens"], row["position_ids"], None, labels=row["labels"])[0]
        results["concat_default_mask"] = per_sample_losses(
            default, row["loss_mask"][0], np.cumsum([0] + results["lengths"]).tolist()
        )
    destroy()
    if layout.rank == 0:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
