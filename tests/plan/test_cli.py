"""`chimed plan` end to end on the paper's CPT config, and the check launch/submit.py runs
before sbatch (refusal in one line, --force)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_chimed import cli as chimed
from megatron_chimed.plan.cli import check, main

REPO = Path(__file__).resolve().parents[2]
CPT = ["experiment=chimed_paper_cpt"]


def row(out: str, name: str) -> list[str]:
    """The figures after an item's name in the memory table."""
    line = next(line for line in out.splitlines() if line.strip().startswith(name))
    return line.strip()[len(name) :].split()


def test_paper_cpt_on_h100(capsys: pytest.CaptureFixture) -> None:
    assert main(CPT) == 0
    out = capsys.readouterr().out
    assert "on 16 x h100-80g (2 node(s) x 8)" in out
    assert "TP 2 (sequence parallel on) x DP 8, distributed optimizer on, bf16" in out
    figures = {
        "bf16 weights": "12.19",
        "fp32 gradient buffer": "24.39",
        "optimizer: fp32 master + Adam m, v": "9.14",
        "activations (recompute none)": "12.63",
        "logits / loss": "0.60",
        "workspace allowance": "2.66",
    }
    assert {name: row(out, name)[0] for name in figures} == figures
    assert row(out, "total")[:5] == ["61.62", "of", "79.65:", "fits,", "margin"]
    recompute = "recompute (parallel.recompute_granularity=null: planned as none): "
    assert recompute + "none 61.62, selective 61.60, full 49.55" in out
    # global batch 512 (64 micro-batches per DP rank), the parameter all-gather overlapped
    assert "compute          27.291 s at 40% of 989 TFLOP/s (assumed efficiency" in out
    assert "over ib-ndr 50 GB/s x 80% (assumed" in out
    assert "0.142 s hides in the first forward" in out
    assert "step             27.724 s, MFU 39%" in out
    assert "to make it fit" not in out


def test_does_not_fit_on_a100_40g(capsys: pytest.CaptureFixture) -> None:
    assert chimed.main(["plan", *CPT, "--gpu", "a100-40g"]) == 1  # through `chimed plan`
    out = capsys.readouterr().out
    assert row(out, "total")[:4] == ["61.62", "of", "40.00:", "DOES"]
    advice = out.split("to make it fit\n")[1].split("\n\n")[0].splitlines()
    assert (
        advice[-1] == "  - parallel.tensor_model_parallel_size=4 (same GPUs, DP 4): 36.4 GiB (fits)"
    )


def test_config_errors_are_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main([*CPT, "training.global_batch_size=12"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("chimed plan: training.global_batch_size=12 ")


def test_check_for_submit() -> None:
    assert check(CPT) == (
        True,
        "plan: fits on h100-80g: 61.62 of 79.65 GiB per GPU (margin 18.03 GiB); "
        "biggest item: fp32 gradient buffer 24.39 GiB",
    )
    fits, line = check(CPT, "a100-40g")
    assert not fits and line.startswith("plan: does not fit on a100-40g: 61.62 of 40.00 GiB")


def _submit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "submit.py"),
            *CPT,
            "run_dir=/r",
            "--dry-run",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow  # three submit.py processes
def test_submit_refuses_a_config_that_does_not_fit_unless_forced() -> None:
    refused = _submit("--gpu", "a100-40g")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "submit.py: plan: does not fit on a100-40g: 61.62 of 40.00 GiB per GPU (margin -21.62 "
        "GiB); biggest item: fp32 gradient buffer 24.39 GiB; `chimed plan <these overrides> "
        "--gpu a100-40g` says what to change, --force submits anyway"
    ]
    forced = _submit("--gpu", "a100-40g", "--force")
    assert forced.returncode == 0 and forced.stdout.startswith("#!/bin/bash")
    assert forced.stderr.splitlines()[-1].endswith("(--force: submitting anyway)")
    fits = _submit()  # h100-80g by default
    assert fits.returncode == 0 and "#SBATCH --gpus-per-node=8" in fits.stdout
    assert fits.stderr.splitlines()[-1].startswith("submit.py: plan: fits on h100-80g")


def test_planning_imports_no_torch() -> None:
    """submit.py plans on the Slurm login node, which need not have torch or megatron."""
    code = (
        "import sys; from megatron_chimed.plan.cli import check; "
        "check(['experiment=chimed_paper_cpt']); "
        "print(sorted(m for m in ('torch', 'megatron.core') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
