"""`chimed gpu-check`: the dry run on the CPU (every section's code path at tiny sizes), the
no-CUDA exit, the TE / flash-attn version gate, local wheels, and the real check on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from megatron_chimed.gpu_check import cli
from megatron_chimed.gpu_check.context import SliceShape
from megatron_chimed.gpu_check.slice_bench import model_flops
from megatron_chimed.platform.gpu_versions import (
    check_gpu_stack,
    flash_attn_problem,
    te_flash_attn_range,
)

SECTIONS = list(cli.SECTIONS)  # every section, in the order they run


def gpu_check(cwd: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`chimed gpu-check ARGS` in a fresh interpreter, as a user types it."""
    cmd = [sys.executable, "-m", "megatron_chimed.cli", "gpu-check", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    tmp = tmp_path_factory.mktemp("gpu_check_dry")
    proc = gpu_check(tmp, "--dry-run", "--work-dir", str(tmp / "work"))
    report_path = tmp / "gpu_check.json"  # the default, in the working directory
    assert report_path.is_file(), proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, json.loads(report_path.read_text())


@pytest.mark.distributed
def test_dry_run_passes_and_prints_one_line_per_check(dry_run) -> None:
    proc, report = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["exit_code"] == 0 and report["dry_run"] is True
    assert [c["name"] for c in report["checks"]] == SECTIONS
    lines = [line for line in proc.stdout.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
    assert [line.split()[1] for line in lines] == SECTIONS
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    # Without TE only the TE-vs-local comparison is skipped; every other path ran on the CPU.
    assert statuses == {**dict.fromkeys(SECTIONS, "PASS"), "te_vs_local": "SKIP"}
    assert report["seconds"] < 90


@pytest.mark.distributed
def test_dry_run_te_section_says_why_it_skipped(dry_run) -> None:
    te = by_name(dry_run[1])["te_vs_local"]
    assert "Transformer Engine" in te["message"]
    # The local half still ran: the converted random tiny model scores about ln(2000).
    assert 7.0 < te["figures"]["loss_local"] < 8.3


@pytest.mark.distributed
def test_dry_run_packed_sft_isolates_samples(dry_run) -> None:
    figures = by_name(dry_run[1])["packed_sft"]["figures"]
    assert len(figures["packed"]) == len(figures["alone"]) >= 4
    assert figures["max_diff"] <= 5e-2
    # The leaking control moves every later sample well beyond that tolerance.
    assert figures["leak_control_min_gap"] > 0.2
    assert figures["grads_finite"] and figures["params_with_grad"] == figures["params"] > 0
    assert figures["thd"] is False  # the CPU runs the block-diagonal mask


@pytest.mark.distributed
def test_dry_run_resume_reproduces_the_second_half(dry_run) -> None:
    figures = by_name(dry_run[1])["sft_train"]["figures"]
    assert figures["status"] == ["done", 20, "done", 20]
    full, resumed = figures["losses"], figures["resumed_losses"]
    assert sorted(resumed, key=int) == [str(i) for i in range(11, 21)]
    assert all(resumed[i] == full[i] for i in resumed)  # bitwise on the CPU
    assert figures["bitwise_equal"] is True
    assert full["20"] < full["1"]  # it trained
    assert sorted(figures["valid_losses"], key=int) == ["5", "10", "15", "20"]
    assert figures["optimizer"] == "torch.optim.adamw.AdamW" and figures["fused_adam"] is False


@pytest.mark.distributed
def test_dry_run_reward_generation_and_slice_figures(dry_run) -> None:
    checks = by_name(dry_run[1])
    reward = checks["reward"]["figures"]
    assert reward["head_device"] == reward["trunk_device"] == "cpu"
    assert len(reward["scores"]) == 8 and len(set(reward["scores"])) > 1
    assert reward["batch_invariance_max_diff"] <= 1e-2

    generation = checks["generation"]["figures"]
    assert generation["fp32_identical"] is True and generation["fp32_tokens"] > 0
    assert generation["tokens_per_s_batch8"] > 0 and generation["tokens_per_s_batch64"] > 0

    dynamic = checks["dynamic_generation"]["figures"]  # on the CPU: fp32, no CUDA graphs
    assert dynamic["rows_identical"] == 1.0 and dynamic["tokens"] > 0
    assert dynamic["cuda_graphs"] is False and dynamic["max_requests"] >= 8
    assert dynamic["static_tokens_per_s"] > 0 and dynamic["dynamic_tokens_per_s"] > 0

    bench = checks["slice"]["figures"]
    assert bench["shape"]["hidden"] == 64  # the tiny shape of the dry run
    assert bench["ms_per_layer_fwd_bwd"] > 0 and bench["ms_per_layer_average"] > 0
    assert bench["baseline"]["tflops_per_gpu"] > 0
    assert all("skipped" in variant for variant in bench["ab"].values())  # TE-only A/B


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_one_line_and_exit_3(tmp_path: Path) -> None:
    proc = gpu_check(tmp_path, timeout=120)
    assert proc.returncode == 3
    output = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(output) == 1 and "no CUDA device" in output[0] and "--dry-run" in output[0]
    assert not (tmp_path / "gpu_check.json").exists()


def test_version_gate_names_both_versions() -> None:
    problems = check_gpu_stack("1.9.0", "2.6.3", (9, 0))
    assert len(problems) == 1
    assert "transformer-engine 1.9.0" in problems[0] and "flash-attn 2.6.3" in problems[0]
    assert "<= 2.5.8" in problems[0]  # TE 1.9's accepted range, from its source
    assert check_gpu_stack("1.11.0", "2.6.3", (9, 0)) == []
    assert check_gpu_stack("2.4.0", "2.1.0", (8, 0))  # below the minimum as well


def test_version_gate_local_builds_and_blackwell() -> None:
    build = "2.8.3+cu12torch2.8cxx11abiTRUE"  # a flash-attn GitHub release wheel
    problem = flash_attn_problem("2.10.0", build)
    assert problem and "transformer-engine 2.10.0" in problem and build in problem
    assert "local part" in problem
    assert flash_attn_problem("2.16.1", build) is None  # TE 2.15+ compares the public part
    assert flash_attn_problem("2.10.0", "2.8.3") is None
    assert flash_attn_problem("2.10.0", "2.6.3", (10, 0)) is not None  # Blackwell needs 2.7.3
    assert flash_attn_problem("2.10.0", "2.6.3", (9, 0)) is None
    assert te_flash_attn_range("0.9.0") is None
    assert te_flash_attn_range("2.12.0.dev0+abc").maximum == "2.8.3"


def test_slice_shape_and_flops() -> None:
    shape = SliceShape.parse("layers=2,seq=2048")
    assert (shape.hidden, shape.layers, shape.seq) == (5120, 2, 2048)
    with pytest.raises(ValueError, match="hidde"):
        SliceShape.parse("hidde=1")
    # One 13B layer at seq 4096: 6 x tokens x 317M weights + attention, ~8.8 TFLOP per step.
    one = SliceShape(layers=1)
    per_layer = model_flops(one, 2, 39424) - model_flops(one, 1, 39424)
    assert 8.5e12 < per_layer < 9.0e12


def _dummy_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, written by hand (no network, no build backend)."""
    wheel = folder / "gpucheck_dummy-0.1-py3-none-any.whl"
    info = "gpucheck_dummy-0.1.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("gpucheck_dummy/__init__.py", "VALUE = 42\n")
        zf.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: gpucheck-dummy\nVersion: 0.1\n"
        )
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def test_wheels_are_installed_and_put_on_the_path(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _dummy_wheel(wheels)
    target = tmp_path / "site"
    proc = gpu_check(
        tmp_path, "--dry-run", "--only", "environment", "--wheels", str(wheels),
        "--wheels-target", str(target), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (target / "gpucheck_dummy" / "__init__.py").is_file()
    env = by_name(json.loads((tmp_path / "gpu_check.json").read_text()))["environment"]
    installed = env["figures"]["installed_wheels"]
    assert installed["wheels"] == ["gpucheck_dummy-0.1-py3-none-any.whl"]
    assert installed["install_seconds"] < 60
    assert env["figures"]["pythonpath"].split(os.pathsep)[0] == str(target.resolve())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_check_on_the_gpu(tmp_path: Path) -> None:
    proc = gpu_check(tmp_path, "--report", str(tmp_path / "report.json"), timeout=900)
    report = json.loads((tmp_path / "report.json").read_text())
    failed = {c["name"]: c["message"] for c in report["checks"] if c["status"] == "FAIL"}
    assert proc.returncode == 0 and not failed, failed
    checks = by_name(report)
    assert checks["environment"]["figures"]["gpu"]
    assert checks["generation"]["figures"]["fp32_identical"] is True
    assert checks["dynamic_generation"]["figures"]["cuda_graphs"] is True
    assert checks["slice"]["figures"]["baseline"]["tflops_per_gpu"] > 0
    assert checks["reward"]["figures"]["head_device"].startswith("cuda")
    assert report["seconds"] < 600
