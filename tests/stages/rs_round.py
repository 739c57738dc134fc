"""The rs stage at TP=2 (gloo, fp32) on the tiny model; see tests/stages/test_rs.py.

Builds, from the converted tiny Ziya: an SFT policy that answers each synthetic prompt with
GOOD or BAD about equally often, and a reward model trained to prefer GOOD (it contains the
marker string). Then the rs stage: a job stopped after phase (b); a lost generation shard
redone; the rerun to the end of round 0; round 1 up to its scores (the fine-tuned policy's
rewards); and an uninterrupted run to compare. Rank 0 writes the measured values to --out.
"""

import argparse
import json
import logging
from pathlib import Path

import torch.distributed as dist

from megatron_chimed import config
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.rejection_sampling import files
from megatron_chimed.stages.rm import RewardStage
from megatron_chimed.stages.rs import run
from megatron_chimed.stages.sft import SFTStage
from megatron_chimed.tokenizer import ZiyaTokenizer
from megatron_chimed.training.loop import train

MARKER = "多喝水"
GOOD, BAD = f"请{MARKER}，好好休息。", "不知道。"
PROMPTS = [f"第{i}个问题：我{part}不舒服怎么办？" for i, part in enumerate("头胃腿手眼耳背牙")]
SEQ = 128
POLICY_DATA = "policy_sft.jsonl"


def common(run_dir: Path, tokenizer: str, *extra: str) -> list[str]:
    return [
        "parallel=tp2_cpu", "training=tiny", "precision=fp32", f"run_dir={run_dir}",
        f"training.seq_length={SEQ}", "training.global_batch_size=4",
        "training.micro_batch_size=2", "training.log_interval=5", "training.eval_interval=0",
        "training.tensorboard=false", f"training.tokenizer={tokenizer}",
        "checkpoint.save_interval=1000", *extra,
    ]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    if dist.get_rank() == 0:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    dist.barrier()
    return path


def train_policy(args, tmp: Path) -> Path:
    """SFT on both answers of every prompt: the policy samples GOOD about half the time."""
    data = write_jsonl(tmp / POLICY_DATA, [
        {"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": a}]}
        for p in PROMPTS for a in (GOOD, BAD)
    ])  # fmt: skip
    cfg = config.load(["stage=sft", "data=sft_sample", *common(
        tmp / "policy", args.tokenizer, f"checkpoint.load={args.converted}",
        "training.train_iters=80", "optim.lr=5e-3", "optim.warmup_iters=2",
    )])  # fmt: skip
    cfg.data["sources"] = [{"name": "policy", "reader": "sharegpt", "path": str(data)}]
    cfg.data["cache_dir"] = str(tmp / "cache")
    train(cfg, SFTStage(cfg, ZiyaTokenizer(args.tokenizer)), args.tokenizer)
    return tmp / "policy" / "checkpoints"


def train_reward(args, tmp: Path, policy: Path) -> Path:
    """The rm stage on GOOD > BAD for every prompt, from the policy's trunk."""
    pairs = write_jsonl(tmp / "pairs.jsonl", [
        {"question": p, "response_chosen": GOOD, "response_rejected": BAD} for p in PROMPTS
    ])  # fmt: skip
    cfg = config.load(["stage=rm", "data=reward_sample", *common(
        tmp / "rm", args.tokenizer, f"checkpoint.load={policy}", "rm.epochs=12",
        "data.rank_order=[response_chosen,response_rejected]", "optim.lr=2e-3",
        f"data.train={pairs}", f"data.valid={pairs}", f"data.test={pairs}",
    )])  # fmt: skip
    train(cfg, RewardStage(cfg, ZiyaTokenizer(args.tokenizer)), args.tokenizer)
    return tmp / "rm" / "checkpoints"


def rs(args, tmp: Path, run_dir: Path, policy: Path, reward: Path, *extra: str) -> str:
    cfg = config.load(["stage=rs", "data=sft_sample", *common(
        run_dir, args.tokenizer, f"checkpoint.load={policy}", f"rs.reward_checkpoint={reward}",
        # 8 answers per prompt: with GOOD and BAD about equally likely, a prompt has no GOOD
        # answer to keep with odds 1/256 (1/16 with 4: a round in three would keep a BAD one)
        "rs.num_prompts=8", "rs.num_samples=8", "rs.top_k=1", "rs.shard_prompts=4",
        "rs.generation.max_new_tokens=12", "rs.generation.temperature=1.0",
        "rs.generation.top_p=1.0", "training.train_iters=30", "optim.lr=2e-3",
        "optim.warmup_iters=2", *extra,
    )])  # fmt: skip
    source = {"name": "policy", "reader": "sharegpt", "path": str(tmp / POLICY_DATA)}
    cfg.data["sources"] = [source]  # the prompts: those the policy was trained on
    cfg.data["cache_dir"] = str(tmp / "cache")
    return run(cfg, args.tokenizer)


def snapshot(run_dir: Path, phase: str) -> dict:
    folder = files.phase_dir(run_dir, 0, phase)
    return {p.name: [p.stat().st_mtime_ns, p.read_text()] for p in sorted(folder.glob("*"))}


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("out", "tmp", "tokenizer", "converted"):
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    tmp = Path(args.tmp)
    initialize(2, 1234)
    logging.basicConfig(level=logging.INFO if dist.get_rank() == 0 else logging.WARNING)
    policy = train_policy(args, tmp)
    reward = train_reward(args, tmp, policy)
    r: dict = {}
    job = tmp / "rs"

    r["first"] = rs(args, tmp, job, policy, reward, "rs.stop_after_phase=generate")
    first = {p: snapshot(job, p) for p in ("prompts", "generate")}
    dist.barrier()  # every rank has read the files before rank 0 deletes some
    # A job killed while generating: shard 1 and the phase's DONE never written.
    gen = files.phase_dir(job, 0, "generate")
    if dist.get_rank() == 0:
        (gen / files.DONE).unlink()
        files.shard_path(gen, 1).unlink()
    dist.barrier()
    r["second"] = rs(args, tmp, job, policy, reward, "rs.stop_after_phase=generate")
    second = {p: snapshot(job, p) for p in ("prompts", "generate")}
    r["third"] = rs(args, tmp, job, policy, reward)
    third = {p: snapshot(job, p) for p in ("prompts", "generate")}
    r["round1"] = rs(args, tmp, job, policy, reward, "rs.rounds=2", "rs.stop_after_phase=score")
    whole = tmp / "rs_uninterrupted"
    r["uninterrupted"] = rs(args, tmp, whole, policy, reward, "rs.stop_after_phase=select")

    if dist.get_rank() == 0:
        r["snapshots"] = {"first": first, "second": second, "third": third}
        r["phase_log"] = files.read_jsonl(job / files.PHASE_LOG)
        r["report"] = json.loads((job / files.REPORT).read_text())
        r["kept"] = {
            name: files.read_jsonl(files.phase_dir(d, 0, "select") / "kept.jsonl")
            for name, d in (("resumed", job), ("uninterrupted", whole))
        }
        r["scored"] = {
            f"round_{i}": list(files.read_shards(files.phase_dir(job, i, "score"), 2))
            for i in (0, 1)
        }
        r["train_metrics"] = files.read_jsonl(files.phase_dir(job, 0, "train") / "metrics.jsonl")
        r["good"], r["marker"] = GOOD, MARKER
        Path(args.out).write_text(json.dumps(r, indent=2, ensure_ascii=False))
    destroy()


if __name__ == "__main__":  # dist_checkpointing's spawned helper re-imports __main__
    main()
