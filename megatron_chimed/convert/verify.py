"""Same tokens through the HF model (transformers) and the megatron checkpoint at some TP.

Runs inside a torchrun world (every rank builds its TP shard of the megatron model); only rank
0 loads the HF model and compares. Logits are compared over the true vocabulary only: the
padded rows exist in megatron alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megatron_chimed.checkpoint.layout import read_metadata, resolve
from megatron_chimed.checkpoint.weights import load_model_weights
from megatron_chimed.model import ModelConfig, ParallelConfig, build_model
from megatron_chimed.platform import initialize


@dataclass
class Comparison:
    max_abs_logit_diff: float
    loss_hf: float
    loss_megatron: float
    greedy_agreement: float  # fraction of positions whose argmax token is the same

    @property
    def loss_diff(self) -> float:
        return abs(self.loss_hf - self.loss_megatron)


def token_batch(vocab_size: int, batch: int, seq_length: int, seed: int = 1234) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_length + 1), generator=generator)


@torch.no_grad()
def megatron_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits (padded rows included) on every rank, on the host: TP shards
    gathered on the model's device (a GPU under NCCL), then compared with HF's on the CPU."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    device = next(model.parameters()).device
    tokens = tokens.to(device)
    positions = torch.arange(tokens.shape[1], device=device).unsqueeze(0).expand_as(tokens)
    model.eval()
    local = model(tokens, positions, None)
    return gather_from_tensor_model_parallel_region(local).float().cpu()


@torch.no_grad()
def hf_logits(hf_dir: str | os.PathLike, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype)
    return hf_model(tokens).logits.float()


def compare(hf: torch.Tensor, megatron: torch.Tensor, tokens: torch.Tensor) -> Comparison:
    """`tokens` are the inputs plus one: position t is scored against token t + 1."""
    vocab = hf.shape[-1]
    megatron = megatron[..., :vocab]
    labels = tokens[:, 1:].reshape(-1)
    return Comparison(
        max_abs_logit_diff=(hf - megatron).abs().max().item(),
        loss_hf=F.cross_entropy(hf.reshape(-1, vocab), labels).item(),
        loss_megatron=F.cross_entropy(megatron.reshape(-1, vocab), labels).item(),
        greedy_agreement=(hf.argmax(-1) == megatron.argmax(-1)).float().mean().item(),
    )


def verify(
    hf_dir: str | os.PathLike,
    megatron_dir: str | os.PathLike,
    tensor_parallel: int,
    precision: str = "fp32",
    batch: int = 2,
    seq_length: int = 64,
) -> Comparison | None:
    """Compare on rank 0 (returned there; None elsewhere). Call in every rank of the world."""
    import torch.distributed as dist

    metadata = read_metadata(resolve(megatron_dir))
    model_cfg = ModelConfig(**metadata["model"])
    layout = initialize(tensor_parallel=tensor_parallel)
    seq_length = min(seq_length, model_cfg.max_position_embeddings)
    model = build_model(model_cfg, ParallelConfig(tensor_parallel), precision, seq_length)
    load_model_weights(model, megatron_dir)
    tokens = token_batch(model_cfg.vocab_size, batch, seq_length)
    logits = megatron_logits(model, tokens[:, :-1])
    result = None
    if layout.rank == 0:
        dtype = next(model.parameters()).dtype  # the HF model runs in the same precision
        result = compare(hf_logits(hf_dir, tokens[:, :-1], dtype), logits, tokens)
    dist.barrier()
    return result


def main(argv: list[str] | None = None) -> int:
    """tools/verify_conversion.py: exit 1 when the logit difference passes --tol."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="tools/verify_conversion.py", description=__doc__)
    ap.add_argument("--hf", required=True)
    ap.add_argument("--megatron", required=True, help="checkpoint root or iter_* folder")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs logit difference allowed")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--seq-length", type=int, default=64)
    args = ap.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        from megatron_chimed.launch.torchrun import torchrun

        return torchrun(__spec__.name, args.tp, sys.argv[1:] if argv is None else argv)

    from megatron_chimed.platform import destroy

    result = verify(args.hf, args.megatron, args.tp, args.precision, seq_length=args.seq_length)
    destroy()
    if result is None:
        return 0
    print(
        f"tp={args.tp} max_abs_logit_diff={result.max_abs_logit_diff:.3g} "
        f"loss_hf={result.loss_hf:.6f} loss_megatron={result.loss_megatron:.6f} "
        f"loss_diff={result.loss_diff:.3g} greedy_agreement={result.greedy_agreement:.4f}"
    )
    if result.max_abs_logit_diff > args.tol:
        print(f"FAIL: max abs logit difference above --tol {args.tol}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
