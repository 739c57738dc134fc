"""Every prediction of a run is kept: one JSON line per question (and seed) per task, written
beside the results JSON, which itself keeps only a couple of samples."""

from __future__ import annotations

import json

import pytest

from megatron_chimed.config.eval import EvalSuiteConfig
from megatron_chimed.config.load import load
from megatron_chimed.eval.runner import run_eval


class AlwaysA:
    """Favours option A; writes the same answer to every question."""

    def next_token_logprobs(self, prompts, candidates):
        return [[0.0 if c == "A" else -1.0 for c in candidates] for _ in prompts]

    def generate(self, prompts, max_new_tokens, seed):
        return ["建议到医院就诊。" for _ in prompts]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_single_task_writes_one_line_per_question(tmp_path):
    cfg = load(["+eval=my_mc"]).eval
    result = run_eval(cfg, AlwaysA(), tmp_path)
    path = tmp_path / "my_mc.predictions.jsonl"
    assert result["files"]["predictions"] == [str(path)]
    lines = read_jsonl(path)
    assert len(lines) == 6 == result["meta"]["questions"]
    # The bundled sample's gold letters are B A C D C A: "always A" gets 2 of 6.
    assert result["mean"]["acc_micro"] == pytest.approx(100 * 2 / 6)
    assert [line["correct"] for line in lines] == [False, True, False, False, False, True]
    first = lines[0]
    assert first["option_scores"] == {"A": 0.0, "B": -1.0, "C": -1.0, "D": -1.0}
    assert (first["id"], first["reference"], first["output"], first["seed"]) == ("q1", "B", "A", 0)
    assert first["prompt"].endswith(
        "成人正常腋下体温约为\nA. 35.0℃\nB. 36.5℃\nC. 38.5℃\nD. 40.0℃\n答案："
    )
    saved = json.loads((tmp_path / "my_mc.json").read_text("utf-8"))
    assert "predictions" not in saved and len(saved["runs"][0]["samples"]) == 2


def test_suite_writes_a_file_per_task_with_every_seed(tmp_path):
    mc = load(["+eval=my_mc"]).eval
    qa = load(["+eval=my_qa"]).eval
    qa.seeds = [3, 4]
    suite = EvalSuiteConfig(name="mine", seeds=[0], tasks={"my_mc": mc, "my_qa": qa})
    run_eval(suite, AlwaysA(), tmp_path)
    assert len(read_jsonl(tmp_path / "mine.my_mc.predictions.jsonl")) == 6  # log-prob: one run
    lines = read_jsonl(tmp_path / "mine.my_qa.predictions.jsonl")
    assert len(lines) == 5 * 2  # five questions, two seeds
    assert [line["seed"] for line in lines] == [3] * 5 + [4] * 5
    assert lines[0]["output"] == "建议到医院就诊。"
    assert lines[0]["reference"].startswith("建议少食多餐")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files
    results = json.loads((tmp_path / "mine.json").read_text("utf-8"))
    assert set(results["tasks"][1]["mean"]) >= {"bleu1", "bleu2", "bleu4", "rougeL"}
