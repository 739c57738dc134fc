"""Median step time of our training loop vs a bare megatron-core loop, side by side.

Same tiny model (bf16, distributed optimizer, TP=1 in one process), same batch shape, same
optimizer settings. The bare loop is megatron-core alone: DDP, get_megatron_optimizer, the
forward-backward function over a fixed batch, optimizer step. Ours adds data loading from a
GPTDataset, loss masking of the padded vocabulary, scheduler, metrics and preemption checks.
Goal: ratio <= 1.05.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

STEPS, WARMUP = 30, 5


def bare_loop(cfg) -> list[float]:
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_chimed.model import build_model, unwrap

    t = cfg.training
    model = build_model(cfg.model, cfg.parallel, "bf16", t.seq_length)
    config = unwrap(model).config
    config.finalize_model_grads_func = finalize_model_grads
    ddp = DistributedDataParallel(
        config, DistributedDataParallelConfig(True, use_distributed_optimizer=True), model
    )
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=1e-3,
            bf16=True,
            params_dtype=torch.bfloat16,
            use_distributed_optimizer=True,
            clip_grad=1.0,
        ),
        [ddp],
    )
    tokens = torch.randint(0, 2000, (t.micro_batch_size, t.seq_length + 1))
    position_ids = torch.arange(t.seq_length).unsqueeze(0)

    def loss_func(output):
        loss = output.float().mean()
        return loss, {"loss": loss.detach()}

    def forward_step(_, model):
        return model(tokens[:, :-1], position_ids, None, labels=tokens[:, 1:]), loss_func

    times = []
    fb = get_forward_backward_func()
    for _ in range(STEPS):
        start = time.perf_counter()
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        fb(
            forward_step_func=forward_step,
            data_iterator=None,
            model=[ddp],
            num_microbatches=t.global_batch_size // t.micro_batch_size,
            seq_length=t.seq_length,
            micro_batch_size=t.micro_batch_size,
            forward_only=False,
        )
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[WARMUP:]


def main() -> None:
    from megatron_chimed import config
    from megatron_chimed.data.indexed import output_prefix, preprocess
    from megatron_chimed.platform import destroy, initialize
    from megatron_chimed.stages.cpt import PretrainStage
    from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA, make_tiny_ziya
    from megatron_chimed.tokenizer import load_tokenizer
    from megatron_chimed.training.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf = make_tiny_ziya(tmp / "tiny", shards=1)
        preprocess(
            sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl")), tmp / "s", hf, progress=False
        )
        cfg = config.load(
            [
                "stage=cpt",
                "parallel=tp1",
                "training=tiny",
                f"run_dir={tmp / 'run'}",
                f"training.train_iters={STEPS}",
                "training.log_interval=1",
                "training.eval_interval=0",
                "training.tensorboard=false",
                f"checkpoint.save_interval={10 * STEPS}",
                f"data.blend=[1.0,{output_prefix(tmp / 's', 'text')}]",
            ]
        )
        initialize(1, cfg.seed)
        # Interleave the two so that machine noise hits both alike.
        ours, bare = [], []
        for _ in range(2):
            bare += bare_loop(cfg)
            run = tmp / f"run{len(ours)}"
            cfg.run_dir = str(run)
            train(cfg, PretrainStage(cfg, load_tokenizer(hf)), None)
            lines = (run / "metrics.jsonl").read_text().splitlines()
            ours += [r["step_s"] for r in map(json.loads, lines)][WARMUP:]
        destroy()
    ratio = statistics.median(ours) / statistics.median(bare)
    print(
        f"median step: ours {statistics.median(ours) * 1e3:.1f} ms, "
        f"bare megatron-core {statistics.median(bare) * 1e3:.1f} ms"
    )
    print(f"RESULT train_step_ratio={ratio:.3f} goal=1.05")


if __name__ == "__main__":
    main()
