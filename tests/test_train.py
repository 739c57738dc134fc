"""`chimed train` (megatron_chimed/train.py) in one process: a start from a converted checkpoint
builds the checkpoint's shape, whatever the default `model` group says."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ("hidden_size", "num_layers", "num_attention_heads", "num_query_groups", "ffn_hidden_size")


@pytest.mark.slow
def test_a_start_from_a_converted_checkpoint_trains_its_shape_without_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from megatron_chimed.checkpoint.layout import read_latest, read_metadata
    from megatron_chimed.convert import hf_to_megatron
    from megatron_chimed.testing.tiny_ziya import TINY, make_tiny_ziya
    from megatron_chimed.train import main

    # Not conf/model/tiny.yaml's shape (64 hidden, 2 layers, 4 heads, FFN 176): building the
    # default group's model would fail loading these weights ("Global shape mismatch").
    mine = dataclasses.replace(
        TINY, hidden_size=96, num_layers=3, num_attention_heads=6, num_query_groups=6,
        ffn_hidden_size=256,
    )  # fmt: skip
    hf = make_tiny_ziya(tmp_path / "hf", model=mine, dtype="float32")
    converted = hf_to_megatron(hf, tmp_path / "converted", progress=False)
    monkeypatch.chdir(ROOT)  # conf/data/sft_sample.yaml names the bundled files from here
    for name in ("CHIMED_SFT_DATA", "CHIMED_CACHE", "CHIMED_CONFIG_PATH", "RANK", "WORLD_SIZE",
                 "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)  # a 1-process world, the configs' defaults
    run_dir = tmp_path / "run"
    status = main(
        ["stage=sft", "data=sft_sample", "parallel=tp1", "training=tiny", "precision=fp32",
         f"checkpoint.load={converted}", f"run_dir={run_dir}", "training.train_iters=1",
         "training.global_batch_size=2", "training.micro_batch_size=1",
         "training.eval_interval=0", "training.tensorboard=false"]
    )  # fmt: skip
    assert status == 0
    # The console's lines are kept in the run's own log, ETA included.
    kept = (run_dir / "train.log").read_text()
    assert "train iter 1 |" in kept and "| ETA 0m00s" in kept and "done at iteration 1" in kept
    saved = read_metadata(read_latest(run_dir / "checkpoints"))
    assert saved["iteration"] == 1
    assert {key: saved["model"][key] for key in SHAPE} == {
        "hidden_size": 96,
        "num_layers": 3,
        "num_attention_heads": 6,
        "num_query_groups": 6,
        "ffn_hidden_size": 256,
    }
