"""`chimed eval` end to end: the tiny Ziya converted with `hf_to_megatron`, every task of the
suite on the bundled sample files, at TP=2 (one 2-process launch), against the DP-sharded run
(TP=1, DP=2) and the HF export run in one process.

The tiny model is built with 1024 positions (the fixture's 256 are too few): the tasks' real
5-shot prompts reach ~900 tokens, and the point is to run them as configured.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_chimed.config import ConfigError
from megatron_chimed.eval.cli import main
from megatron_chimed.testing.workers import ROOT, free_port

SAMPLES = ROOT / "megatron_chimed" / "sample_data" / "eval"
TASKS = [
    "ceval",
    "cmmlu",
    "medqa",
    "chimed_qa",
    "mc_dialogue",
    "ccks2019",
    "chimst",
    "cami",
    "mica",
]
LOGPROB_TASKS = {"ceval", "cmmlu", "medqa"}
# Two seeds and short answers keep the run to ~a minute; the sample CMMLU has two subjects.
OVERRIDES = [
    "+eval=suite",
    "precision=fp32",
    "eval.tasks.cmmlu.subjects=[anatomy,clinical_knowledge]",
    "eval.seeds=[0,1]",
    *(f"eval.tasks.{t}.seeds=null" for t in TASKS),
    *(f"eval.tasks.{t}.max_new_tokens=8" for t in TASKS),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from megatron_chimed.convert import hf_to_megatron
    from megatron_chimed.testing.tiny_ziya import TINY, make_tiny_ziya

    root = tmp_path_factory.mktemp("eval_cli")
    long_tiny = dataclasses.replace(TINY, max_position_embeddings=1024)
    hf = make_tiny_ziya(root / "hf", model=long_tiny)
    return {"hf": hf, "checkpoint": hf_to_megatron(hf, root / "ckpt", progress=False)}


def run_cli(run_dir: Path, *args: str) -> dict:
    """`python -m megatron_chimed.eval.cli ...` as a user types it (it starts torchrun itself)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": str(free_port()),
        "CHIMED_EVAL_DATA": str(SAMPLES),
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        env.pop(key, None)  # left by in-process tests' platform.initialize
    cmd = [
        sys.executable,
        "-m",
        "megatron_chimed.eval.cli",
        *args,
        *OVERRIDES,
        f"run_dir={run_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert (run_dir / "suite.md").is_file()
    return json.loads((run_dir / "suite.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tp2(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_cli(
        tmp_path_factory.mktemp("tp2"), f"checkpoint={models['checkpoint']}", "parallel=tp2_cpu"
    )


def by_task(result: dict) -> dict[str, dict]:
    return {t["task"]: t for t in result["tasks"]}


@pytest.mark.distributed
def test_tp2_run_scores_every_task_in_range(tp2: dict) -> None:
    assert tp2["run"]["tensor_parallel"] == 2 and tp2["run"]["data_parallel"] == 1
    tasks = by_task(tp2)
    assert list(tasks) == TASKS
    for name, task in tasks.items():
        assert task["seeds"] == ([0] if name in LOGPROB_TASKS else [0, 1]), name
        if task["meta"].get("range"):  # bias: the random model never names an option
            low, high = task["meta"]["range"]
            score = task["mean"]["bias_score"]
            unparsed = task["counts_mean"]["unparseable"]
            assert (score is None and unparsed == task["meta"]["items"]) or low <= score <= high
            continue
        assert task["mean"], name
        for metric, value in task["mean"].items():
            assert 0.0 <= value <= 100.0, (name, metric, value)
            assert task["std"][metric] == 0.0  # greedy: every seed gives the same answers
    # 16 four-option questions: a random model is not stuck on one letter everywhere.
    assert 0 < tasks["ceval"]["mean"]["acc_micro"] < 100
    assert tasks["ceval"]["meta"]["questions"] == 16 and tasks["medqa"]["meta"]["questions"] == 8
    assert tasks["mc_dialogue"]["mean"]["rouge1"] > 0  # real generated text was scored


@pytest.mark.distributed
def test_data_parallel_run_gives_the_tp2_results(
    tp2: dict, models: dict[str, Path], tmp_path: Path
) -> None:
    dp2 = run_cli(
        tmp_path,
        f"checkpoint={models['checkpoint']}",
        "parallel=tp1",
        "launcher=torchrun",
        "launcher.procs_per_node=2",
    )
    assert dp2["run"]["tensor_parallel"] == 1 and dp2["run"]["data_parallel"] == 2
    for name, task in by_task(dp2).items():
        reference = by_task(tp2)[name]
        assert task["mean"] == pytest.approx(reference["mean"], abs=1e-9), name
        assert task["counts_mean"] == reference["counts_mean"], name
        assert [r["samples"] for r in task["runs"]] == [r["samples"] for r in reference["runs"]]


@pytest.mark.distributed
def test_hf_export_in_one_process_scores_like_the_megatron_checkpoint(
    tp2: dict, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHIMED_EVAL_DATA", str(SAMPLES))
    assert main([f"hf={models['hf']}", *OVERRIDES, f"run_dir={tmp_path}"]) == 0
    written = json.loads((tmp_path / "suite.json").read_text(encoding="utf-8"))
    assert written["run"] == {"hf": str(models["hf"]), "precision": "fp32"}
    hf = by_task(written)
    assert list(hf) == TASKS
    # Same weights in fp32, greedy: transformers and megatron agree on every answer.
    for name, task in hf.items():
        assert task["mean"] == pytest.approx(by_task(tp2)[name]["mean"], abs=1e-6), name
        assert task["runs"][0]["samples"] == by_task(tp2)[name]["runs"][0]["samples"], name


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (["+eval=suite"], ConfigError, "exactly one of checkpoint=PATH"),
        (["checkpoint=/no/such/ckpt", "+eval=suite"], FileNotFoundError, "/no/such/ckpt"),
        (["checkpoint=."], ConfigError, r"no task selected; add \+eval=suite"),
        (["checkpoint=.", "+eval=ceval", "launcher=slurm"], ConfigError, "sbatch"),
    ],
)
def test_bad_command_lines_name_the_problem(args: list[str], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        main(args)


def test_tokenizer_folder_replaces_the_models_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from megatron_chimed.eval import cli

    calls = []
    (tmp_path / "tok").mkdir()
    monkeypatch.setattr(cli, "evaluate_hf", lambda cfg, path, tok: calls.append((path, tok)) or {})
    assert main([f"hf={tmp_path}", f"tokenizer={tmp_path / 'tok'}", "+eval=ceval"]) == 0
    assert main([f"hf={tmp_path}", "+eval=ceval", "--tokenizer", str(tmp_path)]) == 0
    assert main([f"hf={tmp_path}", "+eval=ceval"]) == 0
    assert calls == [(tmp_path, tmp_path / "tok"), (tmp_path, tmp_path), (tmp_path, None)]
    with pytest.raises(ConfigError, match="name one tokenizer folder"):
        main([f"hf={tmp_path}", f"tokenizer={tmp_path}", f"tokenizer={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=r"tokenizer=.*nope is not a folder"):
        main([f"hf={tmp_path}", f"tokenizer={tmp_path / 'nope'}", "+eval=ceval"])
