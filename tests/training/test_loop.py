"""The shared training loop + CPT on the tiny model at TP=2 over gloo: one launch, many checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed

N = 40  # tests/training/train_checks.py


@pytest.fixture(scope="module")
def results(tiny_ziya_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    from megatron_chimed.convert import hf_to_megatron
    from megatron_chimed.data.indexed import output_prefix, preprocess
    from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA, sample_texts
    from megatron_chimed.tokenizer import ZiyaTokenizer

    tmp = tmp_path_factory.mktemp("train")
    inputs = sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl"))
    preprocess(inputs, tmp / "sample", tiny_ziya_fp32, progress=False)
    converted = hf_to_megatron(tiny_ziya_fp32, tmp / "converted", progress=False)
    ids = ZiyaTokenizer(tiny_ziya_fp32).encode(next(sample_texts()), bos=True)[:65]
    (tmp / "tokens.json").write_text(json.dumps(ids))
    hf = LlamaForCausalLM.from_pretrained(tiny_ziya_fp32, torch_dtype=torch.float32)
    with torch.no_grad():
        hf_loss = hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    out = run_worker(
        "tests/training/train_checks.py",
        2,
        tmp / "results.json",
        "--tmp",
        str(tmp),
        "--data",
        output_prefix(tmp / "sample", "text"),
        "--tokenizer",
        str(tiny_ziya_fp32),
        "--converted",
        str(converted),
        "--tokens",
        str(tmp / "tokens.json"),
    )
    return {**out, "hf_loss_transformers": hf_loss}


def test_cpt_loss_falls_on_the_sample_text(results: dict) -> None:
    loss = results["losses"]["full"]
    assert results["full"] == {"status": "done", "iteration": N}
    first, last = (
        sum(loss[str(i)] for i in (1, 2, 3)) / 3,
        sum(loss[str(i)] for i in (38, 39, 40)) / 3,
    )
    assert first > 7.0  # ln(2000) = 7.6 at random init
    assert last < first - 0.8


def test_exit_at_half_then_resume_is_bitwise_identical(results: dict) -> None:
    half = results["half"]
    assert half["first"] == ["exit", N // 2]
    assert half["second"] == ["done", N, N * 8]
    assert half["params_equal"]
    assert results["losses"]["half"] == results["losses"]["full"]
    assert half["checkpoints"] == [f"iter_{N // 2:07d}", f"iter_{N:07d}"]
    assert half["optimizer_format"] == "dp_reshardable"  # the default, fully parallel save/load


def test_sigusr1_on_one_rank_stops_all_ranks_and_resume_is_exact(results: dict) -> None:
    pre = results["preempt"]
    assert pre["status"] == "preempted" and pre["ranks_agree"]
    # Forward step 30 of 4 per iteration: signalled during iteration 8, seen by the
    # background all-reduce after 9 (training/preemption.py `poll`).
    assert pre["iteration"] == 9
    assert pre["resumed"] == ["done", N]
    assert pre["params_equal"]
    assert results["losses"]["preempt"] == results["losses"]["full"]


def test_failed_checkpoint_write_leaves_latest_on_previous(results: dict) -> None:
    failed = results["failed_save"]
    assert failed["error"] == "disk full (simulated)"
    assert failed["latest"] == f"iter_{N:07d}"
    assert failed["loads_previous"]


def test_converted_hf_checkpoint_reproduces_the_hf_loss(results: dict) -> None:
    ours = results["hf_loss"]["ours"]
    assert ours == pytest.approx(results["hf_loss_transformers"], abs=1e-4)
    # GPTModel's own loss softmaxes over the 48 zero padded vocab rows too: it differs.
    assert abs(results["hf_loss"]["gptmodel"] - ours) > 1e-4
