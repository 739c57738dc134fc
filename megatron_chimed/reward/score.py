"""`tools/score.py`: score a JSONL of (prompt, response) with a reward-model checkpoint.

    python tools/score.py --tp 2 --checkpoint RM_CKPT --input in.jsonl --output scored.jsonl

(`--tp N` started outside torchrun starts its N ranks itself.)

Each input line is `{"prompt": str, "response": str, ...}` (field names configurable); each
output line is the input record with `"score": float` added, in input order, written atomically
by rank 0 once everything is scored. The text is rendered with the chat template the RM was
trained with (`--template`, `--instruction`), so it must match the RM's data config. The log is
OUTPUT.log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_chimed.atomic import atomic_write_text
from megatron_chimed.checkpoint import layout
from megatron_chimed.checkpoint.weights import load_model_weights
from megatron_chimed.data.jsonio import field, iter_jsonl
from megatron_chimed.data.template import ChatTemplate, get_template
from megatron_chimed.generation.loading import model_config_from_metadata, tokenizer_dir
from megatron_chimed.model import ParallelConfig
from megatron_chimed.model.builder import Precision
from megatron_chimed.reward.batch import (
    RankedExample,
    collate,
    encode_response,
    length_batches,
    sequence_multiple,
)
from megatron_chimed.reward.data import RankedRecord
from megatron_chimed.reward.model import build_reward_model
from megatron_chimed.tokenizer import Tokenizer, load_tokenizer


def load_reward_model(
    checkpoint: str | Path, tensor_parallel: int, precision: Precision = "bf16"
) -> tuple[torch.nn.Module, Tokenizer, int]:
    """This rank's RM shard with the checkpoint's weights, its tokenizer, its context length
    (megatron parallel state must be initialised with the same TP)."""
    ckpt_dir = layout.resolve(checkpoint)
    model_cfg = model_config_from_metadata(ckpt_dir)
    parallel = ParallelConfig(tensor_model_parallel_size=tensor_parallel)
    model = build_reward_model(model_cfg, parallel, precision)
    load_model_weights(model, ckpt_dir)
    tokenizer = load_tokenizer(tokenizer_dir(ckpt_dir))
    return model.eval(), tokenizer, model_cfg.max_position_embeddings


@torch.no_grad()
def score_texts(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    texts: list[tuple[str, str]],
    template: ChatTemplate,
    seq_length: int,
    instruction: str | None = None,
    batch_size: int = 8,
    batch_tokens: int | None = None,
) -> list[float]:
    """One score per (prompt, response), in input order. The sequences are sorted by length
    and batched by `batch_size` rows and `batch_tokens` padded tokens (rows x longest;
    default: batch_size x seq_length), so a batch is mostly real tokens; every TP rank scores
    every batch. Right padding does not change a score (causal attention, score read at the
    last real token), so the batching changes no result."""
    device = next(model.parameters()).device
    encoded = []
    for prompt, response in texts:
        record = RankedRecord(prompt, (response,))
        ids, _ = encode_response(template, tokenizer, record, 0, seq_length, instruction)
        encoded.append(ids)
    budget = batch_tokens if batch_tokens is not None else batch_size * seq_length
    scores: list[float] = [0.0] * len(texts)
    for rows in length_batches([len(ids) for ids in encoded], batch_size, budget):
        multiple = sequence_multiple(model)
        width = -(-len(encoded[rows[0]]) // multiple) * multiple  # the batch's longest first
        examples = [RankedExample((encoded[i],), ()) for i in rows]
        batch = collate(examples, width, tokenizer.pad, device, multiple)
        out = model(batch.tokens, batch.position_ids, None, batch.last_index)
        for i, score in zip(rows, out.float().tolist()):
            scores[i] = score
    return scores


def read_scoring_records(path: Path, prompt_field: str, response_field: str) -> list[dict]:
    """The JSONL records, each with string `prompt_field` and `response_field`."""
    records = []
    for where, record in iter_jsonl(path):
        field(record, prompt_field, where)
        field(record, response_field, where)
        records.append(record)
    return records


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="tools/score.py", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="RM checkpoint root or iter_* folder")
    ap.add_argument("--input", type=Path, required=True, help="JSONL of prompt/response")
    ap.add_argument("--output", type=Path, required=True, help="JSONL with a score per line")
    ap.add_argument("--tp", type=int, default=None, help="tensor parallel size (default: world)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--prompt-field", default="prompt")
    ap.add_argument("--response-field", default="response")
    ap.add_argument("--template", default="ziya")
    ap.add_argument("--instruction", default=None, help="prefix of the question, as in training")
    ap.add_argument("--seq-length", type=int, default=None, help="default: the model's context")
    ap.add_argument("--batch-size", type=int, default=8, help="most sequences in one forward")
    ap.add_argument(
        "--batch-tokens", type=int, default=None, help="most padded tokens in one forward"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from megatron_chimed import run_log

    args = parse_args(argv)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    # OUTPUT.log: this process's lines and, through CHIMED_LOG_FILE, its rank 0's.
    with run_log.command_log(run_log.log_path_for(args.output) if rank0 else None, rank0):
        return _score(args, argv)


def _score(args: argparse.Namespace, argv: list[str] | None) -> int:
    from megatron_chimed.platform import destroy, initialize

    records = read_scoring_records(args.input, args.prompt_field, args.response_field)
    if "LOCAL_RANK" not in os.environ and (args.tp or 1) > 1:
        # Started by hand: one rank per TP shard, through the one torchrun launcher.
        from megatron_chimed.launch.torchrun import torchrun

        return torchrun("megatron_chimed.reward.score", args.tp, argv or sys.argv[1:],
                        name="score")  # fmt: skip
    tensor_parallel = args.tp or int(os.environ.get("WORLD_SIZE", "1"))
    initialize(tensor_parallel=tensor_parallel)
    try:
        model, tokenizer, context = load_reward_model(
            args.checkpoint, tensor_parallel, args.precision
        )
        texts = [(r[args.prompt_field], r[args.response_field]) for r in records]
        scores = score_texts(
            model,
            tokenizer,
            texts,
            get_template(args.template),
            args.seq_length or context,
            args.instruction,
            args.batch_size,
            args.batch_tokens,
        )
        if dist.get_rank() == 0:
            lines = [
                json.dumps({**r, "score": s}, ensure_ascii=False) for r, s in zip(records, scores)
            ]
            atomic_write_text(args.output, "".join(line + "\n" for line in lines))
    finally:
        destroy()
    return 0


if __name__ == "__main__":
    from megatron_chimed.launch.rank_main import report_errors

    raise SystemExit(report_errors("score", main))
