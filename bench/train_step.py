"""Median step time of our training loop vs a bare megatron-core loop, side by side.

Both train the same tiny model (bf16, TP=1 in one process) on the same batch shape with the
same megatron settings: DistributedDataParallel with the config's grad-reduce / param-gather
overlap, the distributed Adam optimizer with the config's hyper-parameters and clipping, and
the config's cross entropy (GPTModel's own loss in the bare loop). The bare loop is what
Megatron-LM's examples reduce to: zero the grads, the forward-backward function over a fixed
in-memory batch, optimizer step. Ours adds what a real run needs: batches from a GPTDataset
through a DataLoader, the padded-vocabulary mask on the loss, the LR schedule, metrics (a log
line every `LOG_INTERVAL` steps), the preemption check and the checkpoint-interval test.

The two alternate step by step (A, B, A, B, ...), so that load from other processes hits
both alike: at the start of each of our steps (its first micro-batch's forward step) one bare
step runs, timed from its zero_grad to the end of its optimizer step; our step is timed from
the end of that bare step to the start of the next one, a whole iteration of our loop. After a
warm-up, the result is the median of the ratios of adjacent steps (ours / the bare step that
ran just before it): a burst of load from elsewhere slows both of a pair. The ratio of the two
medians is printed beside it. Goal: ratio <= 1.05.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

# One intra-op thread: two threads of tiny GEMMs mostly measure contention with other work on
# the machine; both loops run the same kernels either way.
torch.set_num_threads(1)

STEPS, WARMUP, RUNS = 40, 5, 2  # RUNS of our loop, each interleaved with bare steps
LOG_INTERVAL = 10  # conf/training/default.yaml's


def bare_steps(cfg) -> Iterator[float]:
    """Megatron-core alone; each next() runs one training step and gives its seconds."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_chimed.model import build_model, unwrap

    t, p, o = cfg.training, cfg.parallel, cfg.optim
    model = build_model(cfg.model, p, "bf16", t.seq_length)
    config = unwrap(model).config
    config.finalize_model_grads_func = finalize_model_grads
    ddp = DistributedDataParallel(
        config,
        DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            use_distributed_optimizer=True,
            overlap_grad_reduce=p.overlap_grad_reduce,
            overlap_param_gather=p.overlap_param_gather,
        ),
        model,
    )
    config.no_sync_func = ddp.no_sync
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=o.lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            bf16=True,
            params_dtype=torch.bfloat16,
            use_distributed_optimizer=True,
            overlap_param_gather=p.overlap_param_gather,
        ),
        [ddp],
    )
    config.grad_scale_func = optimizer.scale_loss
    tokens = torch.randint(0, cfg.model.vocab_size, (t.micro_batch_size, t.seq_length + 1))
    position_ids = torch.arange(t.seq_length).unsqueeze(0)
    num_micro = t.global_batch_size // t.micro_batch_size

    def loss_func(output):
        loss = output.float().mean()
        return loss, {"loss": loss.detach()}

    def forward_step(_, model):
        return model(tokens[:, :-1], position_ids, None, labels=tokens[:, 1:]), loss_func

    fb = get_forward_backward_func()
    while True:
        start = time.perf_counter()
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        fb(
            forward_step_func=forward_step,
            data_iterator=None,
            model=[ddp],
            num_microbatches=num_micro,
            seq_length=t.seq_length,
            micro_batch_size=t.micro_batch_size,
            forward_only=False,
        )
        optimizer.step()
        yield time.perf_counter() - start


def interleaved_run(cfg, tokenizer, run_dir: Path, bare: Iterator[float]) -> tuple[list, list]:
    """One run of our loop with a bare step before each of its steps: (ours, bare) seconds
    per step after the warm-up."""
    from megatron_chimed.stages.cpt import PretrainStage
    from megatron_chimed.training.loop import train

    t = cfg.training
    num_micro = t.global_batch_size // t.micro_batch_size
    ours, theirs = [], []

    class InterleavedStage(PretrainStage):
        calls, resumed = 0, None

        def forward_step(self, data_iterator, model):
            if self.calls % num_micro == 0:  # a step of ours starts (or the first one)
                if self.resumed is not None:
                    ours.append(time.perf_counter() - self.resumed)
                theirs.append(next(bare))
                self.resumed = time.perf_counter()
            self.calls += 1
            return super().forward_step(data_iterator, model)

    cfg.run_dir = str(run_dir)
    train(cfg, InterleavedStage(cfg, tokenizer), None)
    return ours[WARMUP:], theirs[WARMUP:-1]  # pairs: a bare step, then ours


def main() -> None:
    from megatron_chimed import config
    from megatron_chimed.data.indexed import output_prefix, preprocess
    from megatron_chimed.platform import destroy, initialize
    from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA, make_tiny_ziya
    from megatron_chimed.tokenizer import load_tokenizer

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
                "precision=bf16",
                f"run_dir={tmp / 'run'}",
                f"training.train_iters={STEPS}",
                f"training.log_interval={LOG_INTERVAL}",
                "training.eval_interval=0",
                "training.tensorboard=false",
                f"checkpoint.save_interval={10 * STEPS}",
                f"data.blend=[1.0,{output_prefix(tmp / 's', 'text')}]",
            ]
        )
        initialize(1, cfg.seed)
        tokenizer = load_tokenizer(hf)
        bare_stepper = bare_steps(cfg)
        ours, bare = [], []
        for run in range(RUNS):
            o, b = interleaved_run(cfg, tokenizer, tmp / f"run{run}", bare_stepper)
            print(
                f"run {run + 1}: ours {statistics.median(o) * 1e3:.1f} ms, "
                f"bare {statistics.median(b) * 1e3:.1f} ms, "
                f"ratio {statistics.median(o) / statistics.median(b):.3f}"
            )
            ours += o
            bare += b
        destroy()
    paired = statistics.median(o / b for o, b in zip(ours, bare))
    print(
        f"median step over {len(ours)} steps each: ours {statistics.median(ours) * 1e3:.1f} ms, "
        f"bare megatron-core {statistics.median(bare) * 1e3:.1f} ms "
        f"(ratio of medians {statistics.median(ours) / statistics.median(bare):.3f})"
    )
    print(f"RESULT train_step_ratio={paired:.3f} goal=1.05")


if __name__ == "__main__":
    main()
