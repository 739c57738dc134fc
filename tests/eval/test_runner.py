"""run_eval over the Hydra eval config group: seeds, mean/std, files, sharding across ranks."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from megatron_chimed.atomic import atomic_write_text as write_atomic
from megatron_chimed.eval.report import markdown_table, run_over_seeds
from megatron_chimed.eval.runner import run_eval, shard, unshard

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "megatron_chimed" / "sample_data" / "eval"
# The paper's nine evaluation tasks: what the suite must run.
PAPER_TASKS = {
    "ceval",
    "cmmlu",
    "medqa",
    "chimed_qa",
    "mc_dialogue",
    "ccks2019",
    "chimst",
    "cami",
    "mica",
}


def test_shard_and_unshard_round_trip():
    items = list(range(7))
    parts = [shard(items, rank, 3) for rank in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert unshard(parts, 7) == items
    with pytest.raises(ValueError, match="rank 3 is not in a world of size 3"):
        shard(items, 3, 3)


class SeedTask:
    """Metric = seed, so mean and std over seeds are known."""

    deterministic = False

    def meta(self):
        return {"kind": "seed"}

    def run(self, model, seed):
        return {
            "metrics": {"score": float(seed)},
            "counts": {"unparseable": seed % 2},
            "samples": [],
        }


def test_mean_and_sample_std_over_seeds(tmp_path):
    result = run_over_seeds("t", SeedTask(), model=None, seeds=[1, 2, 3, 4, 5])
    assert result["mean"]["score"] == 3.0
    assert result["std"]["score"] == pytest.approx(2.5**0.5)  # sample std (n - 1)
    table = markdown_table([result])
    assert "| t | score | 3.00 | 1.58 | 5 |" in table
    assert '- t: {"kind": "seed", "unparseable": 0.6}' in table  # 3 of 5 runs had one
    SeedTask.deterministic = True
    try:
        once = run_over_seeds("t", SeedTask(), model=None, seeds=[7, 8])
    finally:
        SeedTask.deterministic = False
    assert once["seeds"] == [7] and once["std"]["score"] == 0.0


def test_write_atomic_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "r.json"
    write_atomic(target, "{}")
    write_atomic(target, '{"a": 1}')
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]


class KeywordModel:
    """Deterministic fake: favours 'A' after prompts, answers every generation the same way."""

    def __init__(self):
        self.prompts_seen = 0

    def next_token_logprobs(self, prompts, candidates):
        self.prompts_seen += len(prompts)
        return [[0.0 if c == "A" else -1.0 for c in candidates] for _ in prompts]

    def generate(self, prompts, max_new_tokens, seed):
        self.prompts_seen += len(prompts)
        text = "同意。药物：奥美拉唑\n症状：胃痛\n答案：A 建议到医院就诊"
        return [f"{text}{seed}" for _ in prompts]


def suite_cfg(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(overrides=["+eval=suite", *overrides])
    return cfg.eval


def sample_suite(tmp_path):
    cfg = suite_cfg("eval.tasks.cmmlu.subjects=[anatomy,clinical_knowledge]", "eval.seeds=[0,1]")
    for task in cfg.tasks.values():
        task.seeds = None  # use the suite's two seeds: keeps the test fast
    return OmegaConf.create(
        OmegaConf.to_yaml(cfg).replace("megatron_chimed/sample_data/eval", str(SAMPLES))
    )


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="bundled sample data not present")
def test_suite_end_to_end_on_sample_data(tmp_path):
    cfg = sample_suite(tmp_path)
    result = run_eval(cfg, KeywordModel(), tmp_path)
    by_name = {r["task"]: r for r in result["tasks"]}
    assert set(by_name) == PAPER_TASKS
    assert by_name["ceval"]["seeds"] == [0]  # log-prob scoring runs once
    assert by_name["mica"]["seeds"] == [0, 1]
    assert 0.0 <= by_name["ceval"]["mean"]["acc_micro"] <= 100.0
    assert by_name["cami"]["runs"][0]["counts"]["unparseable"] == 0
    assert by_name["chimst"]["runs"][0]["counts"]["unparseable"] == 0
    written = json.loads((tmp_path / "suite.json").read_text(encoding="utf-8"))
    assert [t["task"] for t in written["tasks"]] == [t["task"] for t in result["tasks"]]
    assert "| mica | bias_score |" in (tmp_path / "suite.md").read_text(encoding="utf-8")


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="bundled sample data not present")
def test_two_ranks_split_prompts_and_agree_with_one_rank(tmp_path):
    cfg = OmegaConf.create(
        {**OmegaConf.to_container(sample_suite(tmp_path).tasks.mica), "seeds": [0]}
    )
    single = run_eval(cfg, KeywordModel(), tmp_path / "one")
    barrier = threading.Barrier(2)
    slots: dict[int, list] = {}

    def gather_for(rank):
        def gather(local):  # stands in for all_gather_object
            slots[rank] = local
            barrier.wait()
            merged = [slots[0], slots[1]]
            barrier.wait()
            return merged

        return gather

    models = [KeywordModel(), KeywordModel()]
    results: dict[int, dict] = {}

    def worker(rank):
        results[rank] = run_eval(cfg, models[rank], tmp_path / "two", rank, 2, gather_for(rank))

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [m.prompts_seen for m in models] == [3, 3]  # six items, half each
    assert results[0]["mean"] == results[1]["mean"] == single["mean"]
    assert "files" in results[0] and "files" not in results[1]  # only rank 0 writes


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="bundled sample data not present")
def test_a_misspelt_task_key_fails_before_any_prompt_naming_it(tmp_path):
    from megatron_chimed.config import ConfigError

    cfg = sample_suite(tmp_path)
    cfg.tasks.ccks2019.shot = 2  # `shots`: read with a default, this would run 5-shot silently
    model = KeywordModel()
    with pytest.raises(ConfigError, match="'eval.tasks.ccks2019.shot': Key 'shot' not in 'NER"):
        run_eval(cfg, model, tmp_path)
    assert model.prompts_seen == 0 and not list(tmp_path.iterdir())


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="bundled sample data not present")
def test_progress_per_task_and_questions_done(tmp_path, caplog, monkeypatch):
    from megatron_chimed.eval import progress

    cfg = sample_suite(tmp_path)
    cfg.tasks = {"ceval": cfg.tasks.ceval, "mica": cfg.tasks.mica}
    whole = run_eval(cfg, KeywordModel(), tmp_path / "whole")
    # Chunks of 2 prompts, a count after every one: the same results, and the counts said.
    monkeypatch.setattr(progress, "PROGRESS_CHUNK", 2)
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)
    model = KeywordModel()
    # Only this run's lines: an earlier test may have left the logger at INFO for `whole`.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="megatron_chimed.eval"):
        chunked = run_eval(cfg, model, tmp_path / "chunked")
    assert [t["mean"] for t in chunked["tasks"]] == [t["mean"] for t in whole["tasks"]]
    lines = [r.getMessage() for r in caplog.records if r.name == "megatron_chimed.eval"]
    assert lines[0] == "task 1/2 ceval ..."
    done = [line for line in lines if " done in " in line]
    assert len(done) == 2 and done[1].startswith("task 2/2 mica done in ")
    mean = chunked["tasks"][0]["mean"]  # the aggregates; not one score per subject
    headline = f"acc_micro={mean['acc_micro']:.2f}, acc_macro={mean['acc_macro']:.2f}"
    assert re.fullmatch(rf"task 1/2 ceval done in \d+s, {headline}", done[0])
    # mica: 6 questions per seed, two seeds.
    assert [line for line in lines if line.startswith("  mica:")] == [
        "  mica: 2/6 questions done",
        "  mica: 4/6 questions done",
        "  mica: 6/6 questions done",
    ] * 2
