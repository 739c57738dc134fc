"""Generation at TP=1 and TP=2 over gloo (one 2-process launch), against `transformers`, and
chat.py on the checkpoint that launch writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_chimed.testing.workers import ROOT, run_worker

pytestmark = pytest.mark.distributed

CHAT = ROOT / "tools" / "chat.py"


@pytest.fixture(scope="module")
def results(tiny_ziya_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("generation")
    results = run_worker(
        "tests/generation/generation_checks.py",
        2,
        tmp / "results.json",
        "--hf",
        str(tiny_ziya_fp32),
        "--ckpt",
        str(tmp / "ckpt"),
    )
    return {**results, "checkpoint": str(tmp / "ckpt")}


@pytest.mark.parametrize("tp", ["tp1", "tp2"])
def test_lm_eval_protocol_scores_equal_lm_eval_s_at_each_tp(results: dict, tp: str) -> None:
    """eval protocol=lm_eval on the Megatron model: lm-evaluation-harness's own per-choice
    log-likelihoods (tests/eval/fixtures/lm_eval), at TP=1 and TP=2."""
    from megatron_chimed.testing.eval_reference import LM_EVAL_FIXTURE, read_reference

    samples = read_reference(LM_EVAL_FIXTURE / "reference.json")["samples"]
    expected = [ll for docs in samples.values() for doc in docs for ll in doc["loglikelihoods"]]
    assert len(expected) > 20
    assert results[tp]["lm_eval_loglikelihoods"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("tp", ["tp1", "tp2"])
def test_kv_cache_decoding_equals_full_recompute(results: dict, tp: str) -> None:
    r = results[tp]
    assert all(len(answer) > 0 for answer in r["greedy"])
    assert r["greedy_static"] == r["greedy_recompute"]


@pytest.mark.parametrize("tp", ["tp1", "tp2"])
def test_dynamic_engine_equals_static_engine_greedy_and_sampled(results: dict, tp: str) -> None:
    r = results[tp]
    assert r["greedy"] == r["greedy_static"]
    assert r["sampled"] == r["sampled_static"]
    assert r["greedy_limits"] == r["greedy_limits_static"]
    # each row stops at its own limit (or earlier, at a stop token)
    assert r["greedy_limits"] == [a[:n] for a, n in zip(r["greedy"], [3, 24, 7])]


@pytest.mark.parametrize("tp", ["tp1", "tp2"])
def test_a_sampled_answer_depends_on_its_row_not_its_batch(results: dict, tp: str) -> None:
    assert results[tp]["sampled_subset"] == results[tp]["sampled"][2:]


@pytest.mark.parametrize("tp", ["tp1", "tp2"])
def test_batch_of_mixed_prompt_lengths_equals_one_by_one(results: dict, tp: str) -> None:
    lengths = {len(ids) for ids in results[tp]["prompt_ids"]}
    assert len(lengths) == 3  # the batch really mixes lengths
    assert results[tp]["greedy"] == results[tp]["greedy_one_by_one"]


def test_greedy_tp2_equals_tp1(results: dict) -> None:
    assert results["tp1"]["prompt_ids"] == results["tp2"]["prompt_ids"]
    assert results["tp2"]["greedy"] == results["tp1"]["greedy"]
    assert results["tp2"]["greedy_text"] == results["tp1"]["greedy_text"]
    assert results["tp2"]["eval_generate"] == results["tp1"]["eval_generate"]


def test_sampling_is_deterministic_for_a_seed_and_equal_across_tp(results: dict) -> None:
    tp1, tp2 = results["tp1"], results["tp2"]
    assert tp1["sampled"] == tp1["sampled_again"]
    assert tp1["sampled"] != tp1["sampled_seed8"]
    assert tp1["sampled"] != [a for a in tp1["greedy"] for _ in range(2)]
    assert tp2["sampled"] == tp1["sampled"]
    assert tp2["sampled_seed8"] == tp1["sampled_seed8"]
    assert tp2["sampled_text"] == tp1["sampled_text"]


def test_samples_per_prompt_differ(results: dict) -> None:
    texts = results["tp1"]["sampled_text"]
    assert [len(answers) for answers in texts] == [2, 2, 2]
    assert any(a != b for a, b in texts)


@pytest.mark.parametrize("tp", ["tp1", "tp2"])
def test_padded_vocab_ids_are_never_generated(results: dict, tp: str) -> None:
    r = results[tp]
    assert r["greedy_poisoned"] == r["greedy"]
    assert r["sampled_poisoned"] == r["sampled"]
    assert max(t for answer in r["sampled"] for t in answer) < 2000


def test_eval_model_logprobs_are_equal_across_tp(results: dict) -> None:
    tp1, tp2 = results["tp1"]["eval_logprobs"], results["tp2"]["eval_logprobs"]
    assert len(tp1) == 2 and all(len(row) == 2 for row in tp1)
    assert all(v < 0 for row in tp1 for v in row)
    assert sum(tp2, []) == pytest.approx(sum(tp1, []), abs=1e-4)


def test_greedy_equals_transformers_generate(results: dict, tiny_ziya_fp32: Path) -> None:
    import torch
    from transformers import LlamaForCausalLM

    from megatron_chimed.tokenizer import ZiyaTokenizer

    tokenizer = ZiyaTokenizer(tiny_ziya_fp32)
    hf = LlamaForCausalLM.from_pretrained(tiny_ziya_fp32, dtype=torch.float32).eval()
    for prompt, expected in zip(results["tp1"]["prompt_ids"], results["tp2"]["greedy"]):
        out = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=[tokenizer.eos, tokenizer.human],
            pad_token_id=tokenizer.pad,
        )[0, len(prompt) :].tolist()
        if out and out[-1] in (tokenizer.eos, tokenizer.human):
            out = out[:-1]
        assert out == expected


def chat_options(results: dict) -> tuple[str, ...]:
    return ("--precision", "fp32", "--max-new-tokens", str(results["max_new_tokens"]))


def test_generate_tp2_launches_itself_and_answers_like_the_api(
    results: dict, tmp_path: Path
) -> None:
    requests, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    records = [
        {"id": i, "prompt": p} if isinstance(p, str) else {"id": i, "messages": p}
        for i, p in enumerate(results["prompts"])
    ]
    requests.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    # `chimed generate --tp 2` started by hand launches its two ranks itself.
    cmd = [sys.executable, "-m", "megatron_chimed.cli", "generate", "--tp", "2"]
    cmd += ["--checkpoint", results["checkpoint"], "--input", str(requests)]
    cmd += ["--output", str(out), *chat_options(results)]
    env = {**single_process_env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in written] == [0, 1, 2]
    assert [r["answers"] for r in written] == results["tp1"]["greedy_text"]


def single_process_env() -> dict[str, str]:
    """This environment without the torch.distributed rendezvous of earlier in-process tests
    (platform.initialize leaves MASTER_PORT set; that port may still be in use)."""
    rendezvous = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    return {k: v for k, v in os.environ.items() if k not in rendezvous}


def test_chat_interactive_keeps_the_dialogue_until_reset(results: dict) -> None:
    first, second = results["prompts"][0][0]["content"], "还要吃药吗？"
    proc = subprocess.run(
        [sys.executable, str(CHAT), "--checkpoint", results["checkpoint"], *chat_options(results)],
        input=f"{first}\n{second}\n/reset\n{second}\n/quit\nnever asked\n",
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**single_process_env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    answers = [line.split("bot> ", 1)[1] for line in proc.stdout.splitlines() if "bot> " in line]
    assert len(answers) == 3
    assert answers[0] == results["tp1"]["greedy_text"][0][0].strip()
    assert answers[1] != answers[2]  # the same question with and without the first turn
