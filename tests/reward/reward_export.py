"""Reward model <-> HF LlamaForSequenceClassification (one process; see test_reward_export.py).

An RM whose trunk is the tiny fp32 Ziya and whose value head is random is saved as a training
stage saves it, exported with megatron_to_hf, scored by transformers, converted back with
hf_to_megatron and scored again by megatron.
"""

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import torch

from megatron_chimed.checkpoint.layout import TOKENIZER, TOKENIZER_FILES
from megatron_chimed.checkpoint.weights import load_model_weights, save_model_weights
from megatron_chimed.convert import hf_to_megatron, megatron_to_hf
from megatron_chimed.model import ParallelConfig
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.reward.model import build_reward_model, init_from_sft
from megatron_chimed.testing.tiny_ziya import TINY

LENGTHS = (7, 19, 12)


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded with <unk> (0, Ziya's pad id); no 0 inside a sequence, as HF finds the
    scored position from the first pad."""
    gen = torch.Generator().manual_seed(3)
    tokens = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.long)
    for row, n in enumerate(LENGTHS):
        tokens[row, :n] = torch.randint(3, TINY.vocab_size, (n,), generator=gen)
    positions = torch.arange(tokens.size(1)).expand_as(tokens)
    mask = (tokens != 0).long()
    return tokens, positions, mask, torch.tensor(LENGTHS) - 1


def megatron_scores(model: torch.nn.Module) -> torch.Tensor:
    tokens, positions, _, last = batch()
    with torch.no_grad():
        return model(tokens, positions, None, last)


def main() -> None:
    from transformers import AutoModelForSequenceClassification

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--hf", required=True)
    ap.add_argument("--tmp", required=True)
    args = ap.parse_args()
    tmp = Path(args.tmp)
    initialize(tensor_parallel=1, seed=1234)
    parallel = ParallelConfig(tensor_model_parallel_size=1)

    hf_to_megatron(args.hf, tmp / "sft", progress=False)
    rm = build_reward_model(TINY, parallel, "fp32")
    init_from_sft(rm, tmp / "sft")
    metadata = {"model": dataclasses.asdict(TINY), "architecture": "LlamaForSequenceClassification"}
    save_model_weights(rm, tmp / "rm", 10, metadata)
    (tmp / "rm" / TOKENIZER).mkdir()
    for name in TOKENIZER_FILES:
        if (Path(args.hf) / name).is_file():
            shutil.copy(Path(args.hf) / name, tmp / "rm" / TOKENIZER / name)
    expected = megatron_scores(rm)

    megatron_to_hf(tmp / "rm", tmp / "hf_rm", progress=False)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp / "hf_rm", dtype=torch.float32)
    tokens, _, mask, _ = batch()
    with torch.no_grad():
        hf_scores = hf(input_ids=tokens, attention_mask=mask).logits[:, 0]

    hf_to_megatron(tmp / "hf_rm", tmp / "rm_back", progress=False)
    back = build_reward_model(TINY, parallel, "fp32")
    load_model_weights(back, tmp / "rm_back")
    config = json.loads((tmp / "hf_rm" / "config.json").read_text())
    results = {
        "architectures": config["architectures"],
        "num_labels": config.get("num_labels", len(config.get("id2label", {}))),
        "pad_token_id": config["pad_token_id"],
        "hf_keys_with_score": sorted(k for k in hf.state_dict() if k.startswith("score")),
        "hf_vs_megatron": (hf_scores - expected).abs().max().item(),
        "round_trip_vs_megatron": (megatron_scores(back) - expected).abs().max().item(),
        "score_spread": (expected.max() - expected.min()).item(),
    }
    destroy()
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
