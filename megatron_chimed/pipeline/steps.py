"""The pipeline's steps as a table: each reads the previous step's output folder under run_dir.

    run_dir/base_hf   (demo) the tiny Ziya in HF layout      run_dir/sft     SFT stage run
    run_dir/convert   Megatron checkpoint of the base        run_dir/rm      reward model run
    run_dir/data      CPT text as an indexed dataset         run_dir/rs      rejection sampling
    run_dir/cpt       CPT stage run (checkpoints/, logs)     run_dir/export  final HF model
    run_dir/eval      evaluation results                     run_dir/logs    one log per step

Training stages run as `chimed train stage=X` does (launch/torchrun.py): the ranks under
torchrun, a user's mistake in them said in one line, signals relayed (a Ctrl-C or SIGTERM
checkpoints the stage and stops the pipeline; a rerun resumes it), rank 0's log lines in
logs/<stage>.log. The user's overrides (e.g. `experiment=demo`) go to every stage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_chimed import run_log
from megatron_chimed.config.schema import PipelineConfig
from megatron_chimed.launch.torchrun import torchrun, torchrun_env
from megatron_chimed.rejection_sampling.files import final_policy
from megatron_chimed.stages import STAGES


class StepFailed(RuntimeError):
    """A step's command exited non-zero; its output (and error line) is in its log."""


@dataclass
class Context:
    run_dir: Path
    pipeline: PipelineConfig
    overrides: list[str]  # the user's, minus run_dir

    def checkpoints(self, step: str) -> Path:
        """The checkpoint root a step leaves behind (with its `latest` pointer)."""
        if step == "convert":
            return self.run_dir / step
        if step == "rs":  # each round fine-tunes into its own folder; the last is the policy
            return final_policy(self.run_dir / step)
        return self.run_dir / step / "checkpoints"

    @property
    def base_hf(self) -> Path:
        return Path(self.pipeline.base_hf) if self.pipeline.base_hf else self.run_dir / "base_hf"

    @property
    def tokenizer(self) -> Path:
        return self.run_dir / "convert" / "tokenizer"

    def log_path(self, step: str) -> Path:
        """logs/<step>.log, its folder created."""
        path = self.run_dir / "logs" / f"{step}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def run_logged(self, step: str, cmd: list[str]) -> None:
        """Run `cmd`, streaming its output to the console and to logs/<step>.log."""
        log_path = self.log_path(step)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                env=torchrun_env(),
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            if proc.wait() != 0:
                raise StepFailed(f"step {step} failed (exit {proc.returncode}): see {log_path}")

    def train(self, stage: str, *extra: str) -> dict[str, Any]:
        p = self.pipeline
        data = p.data.get(stage, STAGES[stage].demo_data)
        args = [
            *self.overrides, f"stage={stage}", f"run_dir={self.run_dir / stage}",
            f"checkpoint.load={self.checkpoints(STAGES[stage].starts_from)}",
            f"training.tokenizer={self.tokenizer}", f"data={data}",
            *extra, *p.stage_overrides.get(stage, []),
        ]  # fmt: skip
        log_path = self.log_path(stage)
        with run_log.command_log(log_path):
            status = torchrun("megatron_chimed.train", p.nproc_per_node, args,
                              preemptible=True, name=f"step {stage}")  # fmt: skip
        if status != 0:  # the ranks' one error line, if any, is printed above
            raise StepFailed(f"step {stage} failed (exit {status}): see {log_path}")
        return {"run_dir": str(self.run_dir / stage)}


def _base(ctx: Context) -> dict[str, Any]:
    if ctx.pipeline.base_hf:
        return {"source": str(ctx.base_hf)}
    from megatron_chimed.testing.tiny_ziya import make_tiny_ziya

    if not ctx.base_hf.exists():  # written atomically: present means complete
        make_tiny_ziya(ctx.base_hf)
    return {"source": "tiny test model (tools/make_tiny_ziya.py)"}


def _convert(ctx: Context) -> dict[str, Any]:
    from megatron_chimed.convert import hf_to_megatron

    hf_to_megatron(ctx.base_hf, ctx.run_dir / "convert", overwrite=True)
    return {}


def _preprocess(ctx: Context) -> dict[str, Any]:
    from megatron_chimed.data.indexed import preprocess

    p = ctx.pipeline
    stats = preprocess(p.pretrain_files, ctx.run_dir / "data" / "cpt", ctx.tokenizer,
                       json_keys=[p.pretrain_text_field], workers=p.preprocess_workers)  # fmt: skip
    return {"documents": stats.documents, "tokens": stats.tokens}


def _cpt(ctx: Context) -> dict[str, Any]:
    from megatron_chimed.data.indexed import output_prefix

    prefix = output_prefix(ctx.run_dir / "data" / "cpt", ctx.pipeline.pretrain_text_field)
    return ctx.train("cpt", f"data.blend=[1.0,{prefix}]")


def _rs(ctx: Context) -> dict[str, Any]:
    return ctx.train("rs", f"rs.reward_checkpoint={ctx.checkpoints('rm')}")


def final_checkpoint(ctx: Context) -> Path:
    """The newest model the pipeline trained (RS, else SFT, else CPT)."""
    for step in ("rs", "sft", "cpt", "convert"):
        if step in ctx.pipeline.steps:
            return ctx.checkpoints(step)
    raise ValueError("pipeline.steps trains no model")


def _export(ctx: Context) -> dict[str, Any]:
    from megatron_chimed.convert import megatron_to_hf

    source = final_checkpoint(ctx)
    megatron_to_hf(source, ctx.run_dir / "export", overwrite=True)
    return {"source": str(source)}


def _eval(ctx: Context) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "megatron_chimed.eval.cli", f"checkpoint={final_checkpoint(ctx)}",
        *ctx.overrides, *ctx.pipeline.eval_overrides, f"run_dir={ctx.run_dir / 'eval'}",
    ]  # fmt: skip
    ctx.run_logged("eval", cmd)
    return {}


STEPS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "base": _base,
    "convert": _convert,
    "preprocess": _preprocess,
    "cpt": _cpt,
    "sft": lambda ctx: ctx.train("sft"),
    "rm": lambda ctx: ctx.train("rm"),
    "rs": _rs,
    "export": _export,
    "eval": _eval,
}


def marker(run_dir: Path, step: str) -> Path:
    """Written last by a step that finished: its presence is what `skip` means on a rerun."""
    return run_dir / "steps" / f"{step}.json"


def read_marker(run_dir: Path, step: str) -> dict[str, Any] | None:
    path = marker(run_dir, step)
    return json.loads(path.read_text()) if path.is_file() else None
