"""GPU performance settings on the tiny model, 2 gloo processes (TP=1, DP=2): see
test_perf_settings.py. Rank 0 writes every measured value to --out; the test asserts on them.

recompute: loss and grads of one forward/backward (fp32) under each recompute mode.
ddp: the DistributedDataParallelConfig wrap_ddp builds from the parallel settings.
overlap: three optimizer steps with overlap_grad_reduce + overlap_param_gather against none.
"""

import argparse
import json

import torch
import torch.distributed as dist

from megatron_chimed.config.schema import OptimConfig
from megatron_chimed.model import ParallelConfig, build_model
from megatron_chimed.platform import initialize, seed_everything
from megatron_chimed.testing.tiny_ziya import TINY

SEQ = 16
RECOMPUTE = {
    "none": {},
    "selective": {"recompute_granularity": "selective"},
    "full_uniform_1": {"recompute_granularity": "full", "recompute_method": "uniform",
                       "recompute_num_layers": 1},
    "full_uniform_2": {"recompute_granularity": "full", "recompute_method": "uniform",
                       "recompute_num_layers": 2},
    "full_block_1": {"recompute_granularity": "full", "recompute_method": "block",
                     "recompute_num_layers": 1},
}  # fmt: skip
NO_OVERLAP = {"overlap_grad_reduce": False, "overlap_param_gather": False}


def fresh_model(parallel: ParallelConfig) -> torch.nn.Module:
    """The same initial weights for every call: the model's init depends on the seed only."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    seed_everything(1234)
    model_parallel_cuda_manual_seed(1234)
    return build_model(TINY, parallel, "fp32")


def tokens(seed: int, rows: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY.vocab_size, (rows, SEQ + 1), generator=gen)


def counter(calls: dict[str, int], key: str):
    def hook(*_: object) -> None:
        calls[key] += 1

    return hook


def recompute_phase() -> dict:
    out: dict = {}
    batch = tokens(7)
    positions = torch.arange(SEQ).unsqueeze(0).expand(2, SEQ)
    reference: dict[str, torch.Tensor] = {}
    for name, settings in RECOMPUTE.items():
        model = fresh_model(ParallelConfig(**settings, **NO_OVERLAP))
        model.train()
        calls = {"layer": 0, "core_attention": 0}
        layer = model.decoder.layers[0]
        for key, module in (
            ("layer", layer),
            ("core_attention", layer.self_attention.core_attention),
        ):
            module.register_forward_hook(counter(calls, key))
        per_token = model(batch[:, :-1], positions, None, labels=batch[:, 1:])
        loss = per_token.float().mean()
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        if name == "none":
            reference = grads
        c = model.config
        out[name] = {
            "loss": loss.item(),
            "max_grad_diff": max((grads[n] - reference[n]).abs().max().item() for n in grads),
            "grads": len(grads),
            "forward_calls": calls,  # 2: run again in the backward (recomputed)
            "config": [c.recompute_granularity, c.recompute_method, c.recompute_num_layers],
            "gradient_accumulation_fusion": c.gradient_accumulation_fusion,
        }
    return out


def ddp_phase() -> dict:
    from megatron_chimed.training.optim import wrap_ddp

    parallel = ParallelConfig(align_param_gather=True, bucket_size=12345)
    ddp = wrap_ddp(fresh_model(parallel), parallel)
    c = ddp.ddp_config
    return {
        "overlap_grad_reduce": c.overlap_grad_reduce,
        "overlap_param_gather": c.overlap_param_gather,
        "align_param_gather": c.align_param_gather,
        "bucket_size": c.bucket_size,
        "use_distributed_optimizer": c.use_distributed_optimizer,
        "grad_reduce_in_fp32": c.grad_reduce_in_fp32,
        "forward_hooks": len(ddp.remove_forward_pre_hook_handles),
    }


def train_three_steps(parallel: ParallelConfig) -> dict:
    """Three global batches of 2 micro-batches per rank; the params after them."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_chimed.training.optim import build_optimizer, params_gathered, wrap_ddp

    ddp = wrap_ddp(fresh_model(parallel), parallel)
    optimizer, _ = build_optimizer(ddp, OptimConfig(lr=1e-2), parallel, "fp32", 3)
    positions = torch.arange(SEQ).unsqueeze(0).expand(2, SEQ)

    def forward_step(data, model):
        batch = next(data)
        per_token = model(batch[:, :-1], positions, None, labels=batch[:, 1:])

        def loss_func(output: torch.Tensor):
            return output.float().sum(), torch.tensor(output.numel()), {}

        return per_token, loss_func

    rank = dist.get_rank()
    hooks_during_save = hooks_after = -1
    for step in range(3):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        data = iter([tokens(100 * step + 10 * rank + i) for i in range(2)])
        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=data,
                                    model=[ddp], num_microbatches=2, seq_length=SEQ,
                                    micro_batch_size=2, forward_only=False)  # fmt: skip
        optimizer.step()
    with params_gathered(ddp):  # as the loop's save(): the params of the last step, gathered
        params = {n: p.detach().clone() for n, p in ddp.named_parameters()}
        hooks_during_save = len(getattr(ddp, "remove_forward_pre_hook_handles", {}))
    hooks_after = len(getattr(ddp, "remove_forward_pre_hook_handles", {}))
    return {"params": params, "hooks_during_save": hooks_during_save, "hooks_after": hooks_after}


def overlap_phase() -> dict:
    plain = train_three_steps(ParallelConfig(**NO_OVERLAP))
    overlap = train_three_steps(ParallelConfig(bucket_size=20000))  # several buckets
    initial = fresh_model(ParallelConfig(**NO_OVERLAP))
    moved = {n: p.detach() for n, p in initial.named_parameters()}
    return {
        "max_param_diff": max(
            (overlap["params"][n] - p).abs().max().item() for n, p in plain["params"].items()
        ),
        "max_update": max(
            (plain["params"][n] - moved[n.removeprefix("module.")]).abs().max().item()
            for n in plain["params"]
        ),
        "hooks_during_save": overlap["hooks_during_save"],
        "hooks_after": overlap["hooks_after"],
        "plain_hooks": plain["hooks_after"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    initialize(tensor_parallel=1, seed=1234)
    results = {"recompute": recompute_phase(), "ddp": ddp_phase(), "overlap": overlap_phase()}
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()


if __name__ == "__main__":
    main()
