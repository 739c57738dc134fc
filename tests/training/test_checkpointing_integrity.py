"""Checkpoint integrity through real saves and resumes at TP=2 (2 gloo processes, one launch of
tests/training/checkpointing_checks.py): checksums written while saving, a corrupt or truncated
`latest`, crafted pickles, an old-format checkpoint, a full disk, resume-time config checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from megatron_chimed.testing.workers import run_worker

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def results(tiny_ziya_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from megatron_chimed.data.indexed import output_prefix, preprocess
    from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA

    tmp = tmp_path_factory.mktemp("integrity")
    preprocess(sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl")), tmp / "sample",
               tiny_ziya_fp32, progress=False)  # fmt: skip
    return run_worker(
        "tests/training/checkpointing_checks.py", 2, tmp / "results.json",
        "--tmp", str(tmp), "--data", output_prefix(tmp / "sample", "text"),
        "--tokenizer", str(tiny_ziya_fp32),
    )  # fmt: skip


def test_every_file_is_checksummed_shards_while_they_are_written(results: dict) -> None:
    base = results["base"]
    assert base["folders"] == ["iter_0000002", "iter_0000004"]
    files = [".metadata", "__0_0.distcp", "__1_0.distcp", "chimed.json", "common.pt",
             "metadata.json", "run_config.yaml"]  # fmt: skip
    assert base["manifest"] == files
    # Only the small files written by other paths (megatron's; Megatron-LM's args and Bridge's
    # run_config.yaml, checkpoint/interop.py) are read back after a save.
    assert base["read_back"] == [".metadata", "common.pt", "metadata.json", "run_config.yaml"]
    assert base["sound"] == []


def test_a_flipped_byte_in_latest_falls_back_and_resumes_exactly(results: dict) -> None:
    flip = results["flip"]
    assert len(flip["warnings"]) == 1
    assert re.fullmatch(
        re.escape(flip["shard"]) + r": checksum [0-9a-f]{8}, manifest\.json records [0-9a-f]{8} "
        r"\(corrupted\): falling back to iter_0000002 \(checkpoint\.on_corrupt=fallback\)",
        flip["warnings"][0],
    )
    assert flip["status"] == ["done", 4]
    assert flip["equal"]  # iterations 3-4 again from iter 2: the base run's weights, bitwise


def test_refuse_names_the_corrupt_file(results: dict) -> None:
    refuse = results["refuse"]
    assert refuse["error"].startswith(f"{refuse['shard']}: checksum ")
    assert refuse["error"].endswith("(corrupted) (checkpoint.on_corrupt=refuse)")


def test_a_truncated_shard_without_manifest_names_the_file(results: dict) -> None:
    truncated = results["truncated"]
    assert re.fullmatch(
        re.escape(truncated["shard"]) + r": \d+ bytes, its \.metadata needs \d+: truncated "
        r"\(checkpoint\.on_corrupt=refuse\)",
        truncated["error"],
    )
    assert (
        truncated["notices"]
        and "no manifest.json (written before checksums" in (truncated["notices"][0])
    )


def test_an_old_format_checkpoint_resumes_exactly(results: dict) -> None:
    assert results["legacy"] == {"status": ["done", 4], "equal": True}


def test_crafted_pickles_are_refused_and_never_run(results: dict) -> None:
    crafted = results["crafted"]
    assert crafted["ran"] == [False, False]
    assert re.fullmatch(
        r".*/evil_rng/checkpoints/iter_0000002: refused to unpickle rng_state/shard_[01]_2: it "
        r"would call _io\.open, which checkpoint data never needs",
        crafted["rng"],
    )
    assert re.fullmatch(
        r".*/evil_common/checkpoints/iter_0000002: refused to unpickle common_state/shard_0_1: "
        r"it would call _io\.open, which checkpoint data never needs",
        crafted["common"],
    )


def test_a_full_disk_while_writing_is_one_line_and_leaves_no_folder(results: dict) -> None:
    enospc = results["enospc"]
    assert re.fullmatch(
        r".*/enospc/checkpoints/iter_0000005: no space left on /\S* \(needed ~[\d.e-]+ GiB, "
        r"free [\d.e+-]+ GiB\)",
        enospc["error"],
    )
    assert enospc["folders"] == ["iter_0000002", "iter_0000004"]
    assert enospc["latest"] == "iter_0000004"


def test_short_of_space_prunes_first_with_keep_last_else_refuses(results: dict) -> None:
    room = results["room"]
    assert room["pruned"] == ["iter_0000004", "iter_0000005"]  # iter 2 made room for iter 5
    gib = room["size"] / 2**30
    needed = re.search(r"needed ~([\d.e-]+) GiB, free ([\d.e-]+) GiB\)$", room["error"])
    assert "/room/checkpoints/iter_0000006: no space left on " in room["error"]
    assert float(needed.group(1)) == pytest.approx(gib, rel=1e-2)
    assert float(needed.group(2)) < float(needed.group(1))
    assert room["folders"] == ["iter_0000004", "iter_0000005"]
    assert room["latest"] == "iter_0000005"
    # A first save (no checkpoint to measure) estimates from its tensors: not short of the real.
    assert room["size"] <= room["first_estimate"] <= 1.5 * room["size"]


def test_resume_refuses_another_batch_shape_warns_on_seed_takes_a_new_lr(results: dict) -> None:
    mismatch = results["mismatch"]
    for key, new, old in (("global_batch", 16, 8), ("seq_length", 32, 64)):
        name = f"training.{key}_size" if key == "global_batch" else f"training.{key}"
        assert mismatch[key].startswith(f"{name}={new} differs from {old} in "), mismatch[key]
        assert f"resume with {name}={old}, or start a new run_dir" in mismatch[key]
    status, warnings = mismatch["seed"]
    assert status == "done"
    assert len(warnings) == 1 and warnings[0].startswith("seed=7 differs from 1234 in ")
    # megatron failed with KeyError on a tuple of the param groups' fields here.
    assert mismatch["lr"] == ["done", 4, [4e-3, 4e-3]]


def test_save_interval_zero_saves_only_at_the_end(results: dict) -> None:
    assert results["at_end"] == ["iter_0000004"]
