"""Build the configured model and run one forward/backward: the first thing to try on a new
cluster (`torchrun --nproc_per_node=2 -m megatron_chimed.smoke model=tiny parallel=tp2_cpu`)."""

from __future__ import annotations

import sys

import torch

from megatron_chimed.config import load
from megatron_chimed.model import build_model
from megatron_chimed.platform import destroy, initialize


def main(overrides: list[str]) -> float:
    cfg = load(overrides)
    layout = initialize(cfg.parallel.tensor_model_parallel_size, cfg.seed)
    model = build_model(cfg.model, cfg.parallel, cfg.precision)  # type: ignore[arg-type]
    seq = min(64, cfg.model.max_position_embeddings)
    gen = torch.Generator().manual_seed(cfg.seed)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, seq + 1), generator=gen).to(layout.device)
    position_ids = torch.arange(seq, device=layout.device).unsqueeze(0).expand(2, seq)
    loss = model(tokens[:, :-1], position_ids, None, labels=tokens[:, 1:]).float().mean()
    loss.backward()
    with_grad = sum(p.grad is not None for p in model.parameters())
    total = sum(1 for _ in model.parameters())
    if layout.rank == 0:
        print(
            f"smoke: {cfg.model.name} TP={layout.tensor_parallel} DP={layout.data_parallel} "
            f"{cfg.precision} loss={loss.item():.4f} params with grad {with_grad}/{total}"
        )
    destroy()
    return loss.item()


if __name__ == "__main__":
    main(sys.argv[1:])
