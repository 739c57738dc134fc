"""`chimed generate` / `tools/chat.py`: chat with a Megatron checkpoint, or answer a JSONL file.

    chimed generate --checkpoint CKPT --tp 2                                 # interactive
    chimed generate --checkpoint CKPT --tp 2 --input q.jsonl --output a.jsonl

`--tp N` started outside torchrun starts N ranks itself (under torchrun, --tp defaults to the
world size).

Interactive: rank 0 reads a line from stdin and broadcasts it, every rank generates its shard's
part, rank 0 prints the answer; the dialogue history is kept (`/reset` starts over, `/exit`,
`/quit` or end of input quits). Batch: each input line is `{"prompt": str}` (raw model input) or
`{"messages": [{"role", "content"}, ...]}` (rendered with the chat template), plus any other
fields; each output line is the input record with `"answers": [str, ...]` added. The output is
written atomically once everything is generated.
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
from megatron_chimed.config.stages import GenerationConfig
from megatron_chimed.data.jsonio import iter_jsonl
from megatron_chimed.data.template import USER, check_messages
from megatron_chimed.generation.api import Prompt, generate
from megatron_chimed.tokenizer import Tokenizer

MODULE = "megatron_chimed.generation.chat"
RESET, EXITS = "/reset", ("/exit", "/quit")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="chimed generate", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint root or iter_* folder")
    ap.add_argument(
        "--tokenizer", type=Path, help="tokenizer folder to use instead of the checkpoint's own"
    )
    ap.add_argument("--tp", type=int, default=None, help="tensor parallel size (default: world)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--input", type=Path, help="JSONL of prompts: batch mode")
    ap.add_argument("--output", type=Path, help="JSONL written in batch mode")
    defaults = GenerationConfig()
    ap.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    ap.add_argument("--temperature", type=float, default=defaults.temperature, help="0: greedy")
    ap.add_argument("--top-k", type=int, default=defaults.top_k)
    ap.add_argument("--top-p", type=float, default=defaults.top_p)
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--num-samples", type=int, default=defaults.num_samples)
    ap.add_argument(
        "--engine",
        default=defaults.engine,
        choices=["dynamic", "static"],
        help="dynamic: continuous batching over a paged KV cache; static: fixed batches",
    )
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size, help="static engine")
    ap.add_argument(
        "--kv-cache-gb",
        type=float,
        default=None,
        help="dynamic engine: KV pool per GPU (default: a fraction of the free memory)",
    )
    ap.add_argument(
        "--max-requests", type=int, default=None, help="dynamic engine: most answers in flight"
    )
    ap.add_argument("--template", default=defaults.template)
    ap.add_argument("--instruction", default=None, help="prefix of the first user message")
    args = ap.parse_args(argv)
    if (args.input is None) != (args.output is None):
        ap.error("--input and --output go together (batch mode)")
    return args


def generation_config(args: argparse.Namespace) -> GenerationConfig:
    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        num_samples=args.num_samples,
        engine=args.engine,
        batch_size=args.batch_size,
        kv_cache_gb=args.kv_cache_gb,
        max_requests=args.max_requests,
        template=args.template,
        instruction=args.instruction,
    )
    cfg.validate()
    return cfg


def read_requests(path: Path) -> list[dict]:
    """The JSONL records, each checked; an error names the file, line and field."""
    records = []
    for where, record in iter_jsonl(path):
        if not isinstance(record, dict) or ("prompt" in record) == ("messages" in record):
            raise ValueError(f"{where}: expected an object with 'prompt' or 'messages'")
        if "prompt" in record and not isinstance(record["prompt"], str):
            raise ValueError(f"{where}: field 'prompt' must be a string")
        if "messages" in record:
            messages = record["messages"]
            try:
                if not isinstance(messages, list) or not messages:
                    raise ValueError("must be a non-empty list of messages")
                check_messages(messages)
                if messages[-1]["role"] != USER:
                    raise ValueError("the last message must be the user's")
            except ValueError as err:
                raise ValueError(f"{where}: field 'messages': {err}") from None
        records.append(record)
    return records


def run_batch(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    cfg: GenerationConfig,
    records: list[dict],
    output: Path,
) -> None:
    prompts: list[Prompt] = [r.get("messages", r.get("prompt")) for r in records]
    rank0 = dist.get_rank() == 0
    answers = generate(model, tokenizer, prompts, cfg, progress=rank0)
    if rank0:
        lines = [
            json.dumps({**r, "answers": a}, ensure_ascii=False) + "\n"
            for r, a in zip(records, answers)
        ]
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, "".join(lines))
        print(f"wrote {len(lines)} records to {output}", flush=True)


def read_line_on_rank0(prompt: str) -> str | None:
    """A line of stdin read by rank 0 and given to every rank; None at end of input."""
    box: list[str | None] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = input(prompt)
        except EOFError:
            box[0] = None
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_interactive(model: torch.nn.Module, tokenizer: Tokenizer, cfg: GenerationConfig) -> None:
    rank0 = dist.get_rank() == 0
    if rank0:
        print(f"chat: {RESET} starts a new dialogue, {' or '.join(EXITS)} quits", flush=True)
    messages: list[dict] = []
    while (line := read_line_on_rank0("user> ")) is not None and line.strip() not in EXITS:
        if line.strip() == RESET:
            messages = []
        elif line.strip():
            messages.append({"role": "user", "content": line})
            answer = generate(model, tokenizer, [messages], cfg)[0][0]
            messages.append({"role": "assistant", "content": answer})
            if rank0:
                print(f"bot> {answer.strip()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from megatron_chimed.generation.loading import checkpoint_tokenizer, load_for_generation
    from megatron_chimed.platform import destroy, initialize

    args = parse_args(argv)
    cfg = generation_config(args)
    records = read_requests(args.input) if args.input else None  # fail before loading weights
    # The template renders only chat messages; raw-text prompts work with any tokenizer.
    chats = records is None or any("messages" in r for r in records)
    template = args.template if chats else None
    if "LOCAL_RANK" not in os.environ and (args.tp or 1) > 1:
        checkpoint_tokenizer(args.checkpoint, args.tokenizer, template)  # before ranks start
        # Started by hand: one rank per TP shard, through the one torchrun launcher.
        from megatron_chimed.launch.torchrun import torchrun

        return torchrun(MODULE, args.tp, sys.argv[1:] if argv is None else argv)
    tp = args.tp or int(os.environ.get("WORLD_SIZE", 1))
    layout = initialize(tensor_parallel=tp, seed=args.seed)
    try:
        if layout.data_parallel > 1:
            raise ValueError(
                f"chat runs one model replica: start {tp} processes for --tp {tp}, "
                f"not {layout.world_size}"
            )
        model, tokenizer = load_for_generation(
            args.checkpoint, tp, args.precision, args.tokenizer, template
        )
        if records is not None:
            run_batch(model, tokenizer, cfg, records, args.output)
        else:
            run_interactive(model, tokenizer, cfg)
    finally:
        destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
