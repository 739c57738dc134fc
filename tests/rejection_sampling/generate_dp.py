"""The RS generate phase (phases.generate_answers) on one checkpoint at TP=1 x DP=2 and at
TP=2 x DP=1 in one 2-process launch, with the dynamic and the static engine, and a lost shard
redone; see test_generate_dp.py. Rank 0 writes every shard's answers to --out."""

import argparse
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import torch.distributed as dist

from megatron_chimed.config.stages import GenerationConfig, RSConfig
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.rejection_sampling import files, phases

PROMPTS = [f"第{i}个问题：我{part}不舒服怎么办？" for i, part in enumerate("头胃腿手眼")]
RS = RSConfig(
    reward_checkpoint="unused",
    num_samples=3,
    shard_prompts=2,  # 5 prompts: shards of 2, 2, 1, dealt to the DP groups
    generation=GenerationConfig(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=42),
)


def generate(run_dir: Path, tp: int, ckpt: str, tokenizer: str, engine: str) -> list[dict]:
    """Every shard of round 0's generate phase, as the stage would write them."""
    rs = dataclasses.replace(RS, generation=dataclasses.replace(RS.generation, engine=engine))
    cfg = SimpleNamespace(
        run_dir=str(run_dir),
        parallel=SimpleNamespace(tensor_model_parallel_size=tp),
        precision="fp32",
    )
    rnd = phases.Round(cfg, rs, SimpleNamespace(template="ziya"), 0, ckpt, Path(tokenizer))
    if dist.get_rank() == 0:
        rows = [{"id": i, "source": "test", "prompt": p} for i, p in enumerate(PROMPTS)]
        files.write_jsonl(rnd.dir("prompts") / phases.PROMPTS, rows)
        rnd.dir("generate").mkdir(parents=True, exist_ok=True)
    dist.barrier()
    phases.generate_answers(rnd, rnd.dir("generate"))
    return list(files.read_shards(rnd.dir("generate"), rnd.num_shards))


def main() -> None:
    from megatron.core import parallel_state

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--tokenizer", required=True)
    args = ap.parse_args()
    tmp = Path(args.tmp)
    results = {}
    for tp in (1, 2):  # two processes: TP=1 is DP=2, TP=2 is DP=1
        initialize(tensor_parallel=tp)
        for engine in ("dynamic", "static"):
            run_dir = tmp / f"tp{tp}_{engine}"
            results[f"tp{tp}_{engine}"] = generate(run_dir, tp, args.ckpt, args.tokenizer, engine)
        # A job killed mid-phase lost shard 1: the rerun redoes it alone.
        lost = files.shard_path(files.phase_dir(tmp / f"tp{tp}_dynamic", 0, "generate"), 1)
        if dist.get_rank() == 0:
            lost.unlink()
        dist.barrier()
        results[f"tp{tp}_redone"] = generate(
            tmp / f"tp{tp}_dynamic", tp, args.ckpt, args.tokenizer, "dynamic"
        )
        parallel_state.destroy_model_parallel()
    rank = dist.get_rank()
    destroy()
    if rank == 0:
        Path(args.out).write_text(json.dumps(results, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
