"""Protocol lm_eval against lm-evaluation-harness 0.4.13's own output on the same model and
questions (tests/eval/fixtures/lm_eval: the command, the numbers and the task files)."""

from __future__ import annotations

import math

import pytest

from megatron_chimed.config.eval import MultiChoiceConfig
from megatron_chimed.eval import lm_eval_mc
from megatron_chimed.eval.multichoice import MultiChoiceTask
from megatron_chimed.eval.multichoice_data import MCQuestion
from megatron_chimed.testing.eval_reference import (
    LM_EVAL_FIXTURE,
    LM_EVAL_TASKS,
    model_digest,
    read_reference,
)

REFERENCE = read_reference(LM_EVAL_FIXTURE / "reference.json")


def lm_eval_task(fmt: str, subjects: list[str], split: str) -> MultiChoiceTask:
    cfg = MultiChoiceConfig(
        format=fmt,
        data_dir=str(LM_EVAL_FIXTURE / fmt),
        subjects=subjects,
        split=split,
        shot_split="dev",
        protocol="lm_eval",
    )
    cfg.validate("eval")
    return MultiChoiceTask(cfg)


def reference_docs(fmt: str, subjects: list[str]) -> list[dict]:
    """lm-eval's samples in our item order (subject by subject, file order)."""
    prefix = "fixture-ceval-valid_" if fmt == "ceval" else "fixture-cmmlu_"
    return [doc for s in subjects for doc in REFERENCE["samples"][prefix + s]]


@pytest.mark.parametrize(("group", "layout"), LM_EVAL_TASKS.items())
def test_prompts_are_lm_eval_s_contexts_byte_for_byte(group, layout):
    fmt, subjects, split = layout
    task = lm_eval_task(fmt, subjects, split)
    docs = reference_docs(fmt, subjects)
    assert [prompt for _, prompt in task.items] == [d["context"] for d in docs]
    assert [lm_eval_mc.continuations(q) for q, _ in task.items] == [
        d["continuations"] for d in docs
    ]
    assert [ord(q.answer) - ord("A") for q, _ in task.items] == [d["target"] for d in docs]


def test_prompt_differs_from_the_benchmarks_own_where_lm_eval_does():
    q = MCQuestion("x", "0", " 问题____ ", {"A": "甲", "B": "乙", "C": "丙", "D": "丁"}, "B")
    text = lm_eval_mc.build_context(q, [q], "cmmlu", "解剖学")
    assert text == (
        "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n"
        "问题____\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案： B\n\n"
        "问题____\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："
    )
    assert lm_eval_mc.build_context(q, [], "ceval", "基础医学").startswith(
        "以下是中国关于基础医学的单项选择题"  # lm-eval's C-Eval header has no "考试"
    )
    with pytest.raises(ValueError, match="no task for format 'medqa'"):
        lm_eval_mc.build_context(q, [], "medqa", "医师资格")


def test_group_is_weighted_by_subject_size_with_a_pooled_stderr():
    marks = {
        subject: {"acc": [d["acc"] for d in docs], "acc_norm": [d["acc_norm"] for d in docs]}
        for subject, docs in (
            (s, REFERENCE["samples"][f"fixture-ceval-valid_{s}"])
            for s in ("basic_medicine", "clinical_medicine")
        )
    }
    metrics = lm_eval_mc.lm_eval_metrics(marks)
    tables = REFERENCE["results"]
    for key in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
        assert metrics[key] == pytest.approx(100 * tables["fixture-ceval-valid"][f"{key},none"])
        for s in marks:
            table = tables[f"fixture-ceval-valid_{s}"]
            assert metrics[f"{key}/{s}"] == pytest.approx(100 * table[f"{key},none"])
    # 3 of 7 questions right: weighted 42.86, where the mean of the subjects is 45.83.
    assert (metrics["acc"], metrics["acc_macro"]) == pytest.approx((300 / 7, 100 * 11 / 24))
    assert math.isnan(lm_eval_mc.mean_stderr([1.0]))  # lm-eval reports N/A for one question


@pytest.fixture(scope="module")
def hf_model(tiny_ziya_fp32):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_chimed.eval.model_api import HFEvalModel

    assert model_digest(tiny_ziya_fp32) == {
        k: v for k, v in REFERENCE["model"].items() if k != "built_by"
    }, "the tiny model rebuilt differently from the one lm-eval measured: remake the fixture"
    model = AutoModelForCausalLM.from_pretrained(tiny_ziya_fp32, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_ziya_fp32, local_files_only=True)
    return HFEvalModel(model, tokenizer, batch_size=3)


@pytest.mark.parametrize(("group", "layout"), LM_EVAL_TASKS.items())
def test_loglikelihoods_predictions_and_tables_equal_lm_eval_s(hf_model, group, layout):
    fmt, subjects, split = layout
    result = lm_eval_task(fmt, subjects, split).run(hf_model, seed=0)
    docs = reference_docs(fmt, subjects)
    for record, doc in zip(result["predictions"], docs, strict=True):
        assert list(record["option_scores"].values()) == pytest.approx(
            doc["loglikelihoods"], abs=1e-5
        )
        assert float(record["correct"]) == doc["acc"]
        assert float(record["predicted_norm"] == record["reference"]) == doc["acc_norm"]
    table = REFERENCE["results"][group]
    assert result["metrics"]["acc"] == pytest.approx(100 * table["acc,none"])
    assert result["metrics"]["acc_stderr"] == pytest.approx(100 * table["acc_stderr,none"])


def test_run_eval_writes_lm_eval_s_scores_per_option(hf_model, tmp_path):
    import json

    from megatron_chimed.eval.runner import run_eval

    fmt, subjects, split = LM_EVAL_TASKS["fixture-cmmlu_anatomy"]
    cfg = MultiChoiceConfig(
        name="cmmlu_lm_eval",
        format=fmt,
        data_dir=str(LM_EVAL_FIXTURE / fmt),
        subjects=subjects,
        split=split,
        shot_split="dev",
        protocol="lm_eval",
    )
    result = run_eval(cfg, hf_model, tmp_path)
    assert result["seeds"] == [0] and result["meta"]["protocol"] == "lm_eval"  # scored once
    lines = (tmp_path / "cmmlu_lm_eval.predictions.jsonl").read_text("utf-8").splitlines()
    for line, doc in zip(lines, reference_docs(fmt, subjects), strict=True):
        record = json.loads(line)
        assert record["prompt"] == doc["context"]
        assert list(record["option_scores"].values()) == pytest.approx(
            doc["loglikelihoods"], abs=1e-5
        )
