"""README "Your own model and data", command by command, on the tiny model and files written
here: convert an HF folder, CPT on preprocessed JSONL, SFT on alpaca/CSV/ShareGPT files, a
reward model from a CSV with a column mapping, rejection sampling, export, chat, eval on a QA
file, plot. Each step must exit 0 and leave what the next one reads."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_chimed.checkpoint.layout import read_latest, read_metadata
from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA, TINY
from megatron_chimed.testing.workers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# Short runs of the tiny model in one process; everything else as the README writes it.
SHORT = ["parallel=tp1", "training=tiny", "precision=fp32", "training.train_iters=2",
         "training.global_batch_size=2", "training.micro_batch_size=1",
         "training.eval_interval=0", "training.tensorboard=false"]  # fmt: skip
QUESTIONS = ["头痛怎么办？", "发烧了要吃药吗？", "咳嗽一周了怎么办？", "失眠怎么调理？"]


def run(*cmd: str, cwd: Path) -> str:
    # Not the rendezvous of in-process tests run before (their port may still be taken).
    rendezvous = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in rendezvous}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, *cmd], cwd=cwd, capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def chimed(*args: str, cwd: Path) -> str:
    return run("-m", "megatron_chimed.cli", *args, cwd=cwd)


def write_user_files(home: Path) -> None:
    (home / "corpus").mkdir()
    for path in sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl")):
        shutil.copy(path, home / "corpus" / path.name)
    rows = [
        {"q": q, "good": f"建议多休息，{q[:2]}持续请就医。", "bad": "不知道。"} for q in QUESTIONS
    ]
    for name in ("my_rm.csv", "my_rm_valid.csv"):
        with open(home / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["q", "good", "bad"])
            writer.writeheader()
            writer.writerows(rows)
    qa = [{"question": r["q"], "answer": r["good"]} for r in rows]
    (home / "qa.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in qa))


def test_readme_journey(tiny_ziya_safetensors: Path, tmp_path: Path) -> None:
    home = tmp_path
    shutil.copytree(tiny_ziya_safetensors, home / "my_llama")
    write_user_files(home)

    run("tools/convert_hf_to_megatron.py", "--hf", str(home / "my_llama"),
        "--out", str(home / "ckpt/mine"), "--no-progress", cwd=ROOT)  # fmt: skip
    run("tools/preprocess_data.py", "--input", *map(str, sorted((home / "corpus").iterdir())),
        "--tokenizer", str(home / "my_llama"), "--output-prefix", str(home / "data/corpus"),
        cwd=ROOT)  # fmt: skip
    chimed("train", "stage=cpt", "checkpoint.load=ckpt/mine", "training.tokenizer=my_llama",
           "data.blend=[1.0,data/corpus_text_document]", "run_dir=runs/cpt", *SHORT,
           cwd=home)  # fmt: skip
    cpt = read_metadata(read_latest(home / "runs/cpt/checkpoints"))
    assert cpt["iteration"] == 2 and cpt["model"]["hidden_size"] == TINY.hidden_size
    assert "resumed" not in (home / "runs/cpt/train.log").read_text()

    chimed("train", "stage=sft", "data=sft_own_example", "checkpoint.load=runs/cpt/checkpoints",
           "run_dir=runs/sft", *SHORT, cwd=home)  # fmt: skip
    chimed("train", "stage=rm", "checkpoint.load=runs/sft/checkpoints", "data.train=my_rm.csv",
           "data.valid=my_rm_valid.csv", "data.test=null",
           "data.columns={prompt: q, chosen: good, rejected: bad}", "run_dir=runs/rm", *SHORT,
           cwd=home)  # fmt: skip
    chimed("train", "stage=rs", "data=sft_own_example", "checkpoint.load=runs/sft/checkpoints",
           "rs.reward_checkpoint=runs/rm/checkpoints", "run_dir=runs/rs", "rs.num_prompts=4",
           "rs.shard_prompts=4", "rs.num_samples=2", "rs.generation.max_new_tokens=8", *SHORT,
           cwd=home)  # fmt: skip
    policy = home / "runs/rs/rs/round_0/train/checkpoints"
    assert read_metadata(read_latest(policy))["iteration"] == 2

    run("tools/convert_megatron_to_hf.py", "--megatron", str(policy),
        "--out", str(home / "my_chimed_hf"), "--no-progress", cwd=ROOT)  # fmt: skip
    assert (home / "my_chimed_hf" / "config.json").is_file()
    out = chimed("eval", f"checkpoint={policy}", "+eval=my_qa", f"eval.data_file={home}/qa.jsonl",
                 "eval.max_new_tokens=8", "eval.seeds=[0]", "precision=fp32", cwd=home)  # fmt: skip
    assert "bleu" in out.lower()
    chimed("plot", "runs/cpt", "runs/sft", "runs/rm", "runs/rs", "--out", "curves.png", cwd=home)
    assert (home / "curves.png").stat().st_size > 0
