"""What the loop does around each step, in one process (TP=1, bf16, the overlap defaults), on
a run that starts from a converted checkpoint at a vanishing LR: the loaded weights survive the
optimizer steps (its bf16 run keeps fp32 copies of them), the first iteration runs without the
param-gather pre-hooks and the next ones with them, and the logged step time leaves out
validation."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EVAL_SLEEP_S = 3.0  # a validation far slower than a tiny step


@pytest.fixture(scope="module")
def run(tiny_ziya: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from megatron.core.distributed.param_and_grad_buffer import _ParamAndGradBucketGroup

    from megatron_chimed import config
    from megatron_chimed.checkpoint.weights import load_model_weights
    from megatron_chimed.convert import hf_to_megatron
    from megatron_chimed.data.indexed import output_prefix, preprocess
    from megatron_chimed.model import build_model, unwrap
    from megatron_chimed.platform import destroy, initialize
    from megatron_chimed.stages.cpt import PretrainStage
    from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA
    from megatron_chimed.tokenizer import load_tokenizer
    from megatron_chimed.training.loop import train
    from megatron_chimed.training.preemption import SIGNALS

    tmp = tmp_path_factory.mktemp("loop_steps")
    inputs = sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl"))
    preprocess(inputs, tmp / "sample", tiny_ziya, progress=False)
    converted = hf_to_megatron(tiny_ziya, tmp / "converted", progress=False)
    cfg = config.load(
        ["stage=cpt", "parallel=tp1", "training=tiny", f"run_dir={tmp / 'run'}",
         "training.train_iters=3", "training.log_interval=1", "training.eval_interval=2",
         "training.eval_iters=1", "training.tensorboard=false", "checkpoint.save_interval=0",
         f"checkpoint.load={converted}", "optim.lr=1e-12", "optim.warmup_iters=0",
         f"data.blend=[1.0,{output_prefix(tmp / 'sample', 'text')}]"]
    )  # fmt: skip
    num_micro = cfg.training.num_microbatches(1)
    gathers: list[int] = []  # param all-gathers started, by training iteration (1-based)

    class ObservedStage(PretrainStage):
        calls = 0

        def forward_step(self, data_iterator, model):
            if model.training:
                ObservedStage.calls += 1
            else:
                time.sleep(EVAL_SLEEP_S / num_micro)  # validation: one global batch
            return super().forward_step(data_iterator, model)

    real_start = _ParamAndGradBucketGroup.start_param_sync

    def counted_start(self, *args, **kwargs):
        if ObservedStage.calls:  # during training, not the saves' forced syncs
            gathers.append((ObservedStage.calls - 1) // num_micro + 1)
        return real_start(self, *args, **kwargs)

    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    initialize(1, cfg.seed)
    _ParamAndGradBucketGroup.start_param_sync = counted_start
    try:
        state = train(cfg, ObservedStage(cfg, load_tokenizer(tiny_ziya)), None)
        loaded = build_model(cfg.model, cfg.parallel, cfg.precision, cfg.training.seq_length)
        load_model_weights(loaded, converted)
        want = dict(unwrap(loaded).named_parameters())
        moved = max(
            (param - want[name]).abs().max().item()
            for name, param in unwrap(state.model).named_parameters()
        )
    finally:
        _ParamAndGradBucketGroup.start_param_sync = real_start
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        destroy()
    lines = (tmp / "run" / "metrics.jsonl").read_text().splitlines()
    return {
        "status": (state.status, state.iteration),
        "moved_from_loaded": moved,
        "gathers": gathers,
        "step_s": {
            r["iteration"]: r["step_s"] for r in map(json.loads, lines) if r["split"] == "train"
        },  # fmt: skip
    }


def test_the_run_completes(run: dict) -> None:
    assert run["status"] == ("done", 3)
    assert sorted(run["step_s"]) == [1, 2, 3]


def test_loaded_weights_survive_the_optimizer_steps(run: dict) -> None:
    # At LR 1e-12 a bf16 weight cannot move; it would if the optimizer stepped its own copies
    # of the weights as built (random) instead of the loaded ones.
    assert run["moved_from_loaded"] == 0.0


def test_first_iteration_skips_the_param_gather_then_hooks_gather(run: dict) -> None:
    # Built params are the same on every rank: nothing to gather before the first update.
    assert 1 not in run["gathers"]
    # From the second forward on, the pre-hooks gather what the previous step updated.
    assert {2, 3} <= set(run["gathers"])


def test_validation_time_is_not_step_time(run: dict) -> None:
    # Validation ran after iteration 2, inside the window of iteration 3's log line.
    assert run["step_s"][3] < EVAL_SLEEP_S
