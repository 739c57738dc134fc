"""SFT on the shared loop at TP=2 (gloo, fp32) from the converted tiny Ziya; see
tests/stages/test_sft.py.

Runs: an uninterrupted run of N iterations; a run that exits at EXIT (mid-epoch) and resumes
to N. Then the trained model greedily answers the prompts of its training samples. Rank 0 writes
the measured values to --out.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_chimed import config
from megatron_chimed.config.stages import GenerationConfig
from megatron_chimed.data.sft import load_data_config, packed_sft_dataset
from megatron_chimed.data.template import DOCTOR_INSTRUCTION, get_template
from megatron_chimed.generation.decode import generate_ids
from megatron_chimed.model import unwrap
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.stages.sft import SFTStage
from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA
from megatron_chimed.tokenizer import ZiyaTokenizer
from megatron_chimed.training.loop import train

N = 120
EXIT = N // 2 + 1  # an odd iteration: 2 rows each, so mid-epoch for an even row count
SEQ = 256
# Four CMD QA pairs, two of them twice (weight 1.5), packed into a few rows; a global batch is
# 2 rows, so N iterations are tens of epochs. The test checks that EXIT falls mid-epoch.
SOURCES = [
    {
        "name": "cmd",
        "reader": "cmd_finetune",
        "path": str(SAMPLE_DATA / "sft" / "cmd_finetune.json"),
        "max_samples": 4,
        "weight": 1.5,
        "instruction": DOCTOR_INSTRUCTION,
    }
]


def run_cfg(args, run_dir: Path, *extra: str):
    cfg = config.load([
        "stage=sft", "parallel=tp2_cpu", "training=tiny", "data=sft_sample", "precision=fp32",
        f"run_dir={run_dir}", f"training.seq_length={SEQ}", f"training.train_iters={N}",
        "training.global_batch_size=2", "training.log_interval=1", "training.eval_interval=0",
        "training.tensorboard=false",
        "optim.lr=5e-3", "optim.warmup_iters=2", f"checkpoint.load={args.converted}",
        f"checkpoint.save_interval={N}", *extra,
    ])  # fmt: skip
    cfg.data["sources"] = SOURCES
    cfg.data["cache_dir"] = str(Path(args.tmp) / "cache")
    return cfg


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in unwrap(model).parameters()]


def all_ranks(value: bool) -> bool:
    flag = torch.tensor([float(value)])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["iteration"]: r["lm_loss"] for r in map(json.loads, lines) if r["split"] == "train"}


def trained_pairs(cfg, tok: ZiyaTokenizer) -> tuple[int, list[tuple[list[int], list[int]]]]:
    """The number of packed rows, and (prompt ids, trained answer ids) of every distinct
    sample in them."""
    data = load_data_config(cfg.data)
    data.seq_length = SEQ
    rows = packed_sft_dataset(data, tok)
    pairs = {}
    for row in range(len(rows)):
        for ids, mask in rows.samples(row):
            start = int(np.argmax(mask))
            pairs[tuple(ids[:start].tolist())] = ids[start:].tolist()
    return len(rows), [(list(p), a) for p, a in sorted(pairs.items())]


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("out", "tmp", "tokenizer", "converted"):
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    tmp, tok = Path(args.tmp), ZiyaTokenizer(args.tokenizer)
    initialize(2, 1234)
    r: dict = {}

    cfg = run_cfg(args, tmp / "full")
    full = train(cfg, SFTStage(cfg, tok), args.tokenizer)
    r["full"] = [full.status, full.iteration]

    cfg = run_cfg(args, tmp / "half", f"training.exit_after={EXIT}")
    first = train(cfg, SFTStage(cfg, tok), args.tokenizer)
    cfg = run_cfg(args, tmp / "half")
    second = train(cfg, SFTStage(cfg, tok), args.tokenizer)
    r["half"] = [first.status, first.iteration, second.status, second.iteration]
    r["consumed_at_exit"] = first.consumed_samples
    r["params_equal"] = all_ranks(
        all(torch.equal(a, b) for a, b in zip(params(full.model), params(second.model)))
    )

    # Greedy answers of the trained model to the prompts it was trained on.
    r["rows"], pairs = trained_pairs(cfg, tok)
    model = unwrap(full.model).eval()
    gen = GenerationConfig(max_new_tokens=max(len(a) for _, a in pairs), use_kv_cache=False)
    stops = get_template("ziya").stop_token_ids(tok)
    answers = generate_ids(model, [p for p, _ in pairs], gen, tok.vocab_size, stops)
    # The trained answer ends with `</s>`; generation stops there and drops the stop token, so
    # an exact answer also shows that the model learned to stop.
    r["answers"] = [
        {"expected": tok.decode(want[:-1]), "got": tok.decode(got), "exact": got == want[:-1]}
        for (_, want), got in zip(pairs, answers)
    ]
    r["trained_eos"] = all(want[-1] == tok.eos for _, want in pairs)

    if dist.get_rank() == 0:
        r["losses"] = {name: losses(tmp / name) for name in ("full", "half")}
        Path(args.out).write_text(json.dumps(r, indent=2, ensure_ascii=False))
    destroy()


if __name__ == "__main__":  # dist_checkpointing's spawned helper re-imports __main__
    main()
