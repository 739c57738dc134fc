"""What the checks share: their sizes, the tiny converted checkpoint, this process's place in
the world, and building models the project's way (builder + weights loader).

Model building goes through `CheckContext.build`, which first clears the attention settings a
previous model left: megatron-core writes TE's `NVTE_FLASH_ATTN` / `NVTE_FUSED_ATTN` /
`NVTE_UNFUSED_ATTN` into the process environment when it builds a model, and asserts on the
next build that they match; a local-spec model (all three 0) followed by a TE model would stop
at that assertion. TE also caches its backend choice per attention shape, so the cache is
marked stale too, and each model's first forward selects (and logs) its own backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_chimed.model import ModelConfig, ParallelConfig
from megatron_chimed.platform import ParallelLayout

# TE's attention loggers: DotProductAttention's own, and the one in its utils module.
TE_LOGGERS = ("DotProductAttention", "transformer_engine")
TE_SELECTION = ("Running with", "Selected backend", "Available backends")
ATTENTION_ENV = ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN")
# Where TE keeps its backend choice: 2.x, then 1.x.
TE_BACKEND_CACHES = (
    "transformer_engine.pytorch.attention.dot_product_attention.dot_product_attention",
    "transformer_engine.pytorch.attention",
)


@dataclass(frozen=True)
class SliceShape:
    """The benchmark slice: Ziya-13B-v2's layer shape with few layers (`chimed gpu-check
    --slice hidden=64,heads=4,...` for another)."""

    hidden: int = 5120
    heads: int = 40
    ffn: int = 13824
    vocab: int = 39410
    layers: int = 4
    seq: int = 4096
    micro_batch: int = 1

    @classmethod
    def parse(cls, text: str) -> SliceShape:
        """`key=value,...` over the 13B defaults; a ValueError names an unknown key."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            if key not in fields:
                raise ValueError(f"--slice {item!r}: expected keys {sorted(fields)}")
            values[key] = int(value)
        return cls(**values)


TINY_SLICE = SliceShape(hidden=64, heads=4, ffn=176, vocab=2000, layers=2, seq=128)


@dataclass(frozen=True)
class Sizes:
    """How much each check does. GPU: what fits in the 10 minutes with the slice; dry run:
    the same code paths at tiny sizes on the CPU."""

    seq_length: int = 256  # SFT rows, TE-vs-local and reward sequences (tiny model)
    train_iters: int = 20
    save_at: int = 10
    eval_interval: int = 5
    gen_new_tokens: int = 32
    gen_batches: tuple[int, ...] = (8, 64)
    slice: SliceShape = SliceShape()
    slice_iters: int = 10
    slice_warmup: int = 3


GPU_SIZES = Sizes()
DRY_SIZES = Sizes(gen_new_tokens=6, slice=TINY_SLICE, slice_iters=3, slice_warmup=1)


@dataclass
class CheckContext:
    """Shared by every check of one run (one per rank under torchrun)."""

    dry_run: bool
    layout: ParallelLayout
    work: Path
    converted: Path  # the tiny converted checkpoint root (iter_0000000, tokenizer/, latest)
    model: ModelConfig  # its architecture, from its chimed.json
    sizes: Sizes
    te: bool  # the Transformer Engine spec can run here (CUDA and TE)
    te_reason: str = ""  # why not, when it cannot
    precision: str = "bf16"

    @property
    def device(self) -> torch.device:
        return self.layout.device

    @property
    def tp(self) -> int:
        return self.layout.tensor_parallel

    @property
    def rank0(self) -> bool:
        return self.layout.rank == 0

    @property
    def tokenizer_dir(self) -> Path:
        return self.converted / "tokenizer"

    def no_fused_adam(self) -> str | None:
        """Why training cannot run here, or None: on a GPU, training refuses torch's AdamW
        (megatron's fallback without Transformer Engine or Apex)."""
        from megatron.core import optimizer

        if self.device.type == "cuda" and optimizer.USING_PYTORCH_OPTIMIZER:
            return "no fused Adam (Transformer Engine or Apex): training refuses torch's AdamW"
        return None

    def impl(self) -> str:
        return "transformer_engine" if self.te else "local"

    def parallel(self, impl: str | None = None, sequence_parallel: bool = True) -> ParallelConfig:
        """The run's TP; sequence parallel (the paper's layout) where the TE spec allows it."""
        impl = impl or self.impl()
        sp = sequence_parallel and self.tp > 1 and impl == "transformer_engine"
        return ParallelConfig(tensor_model_parallel_size=self.tp, sequence_parallel=sp)

    def build(
        self, impl: str | None = None, precision: str | None = None, sequence_parallel: bool = True
    ) -> torch.nn.Module:
        """This rank's shard of the tiny model with the converted weights loaded."""
        from megatron_chimed.checkpoint.weights import load_model_weights
        from megatron_chimed.model import build_model

        impl = impl or self.impl()
        model_cfg = dataclasses.replace(self.model, transformer_impl=impl)
        fresh_attention_env()
        model = build_model(
            model_cfg,
            self.parallel(impl, sequence_parallel),
            precision or self.precision,
            self.sizes.seq_length,
        )
        load_model_weights(model, self.converted)
        return model


def prepare_assets(work: Path) -> Path:
    """The tiny Ziya HF folder (random weights, trained tokenizer) converted with the
    project's converter; returns the converted root. Made once per work folder, in the
    launching process, because conversion runs in a world of one process."""
    from megatron_chimed.convert import hf_to_megatron
    from megatron_chimed.testing.tiny_ziya import make_tiny_ziya

    hf, converted = work / "tiny_ziya_hf", work / "tiny_ziya_converted"
    if not hf.is_dir():
        make_tiny_ziya(hf)
    if not converted.is_dir():
        hf_to_megatron(hf, converted, progress=False)
    return converted


def fresh_attention_env() -> None:
    """Forget the attention backend of the previous model (see the module docstring)."""
    for name in ATTENTION_ENV:
        os.environ.pop(name, None)
    for module_name in TE_BACKEND_CACHES:
        cache = getattr(sys.modules.get(module_name), "_attention_backends", None)
        if isinstance(cache, dict):
            cache["attention_params"] = None
            cache["backend_selection_requires_update"] = True


@contextlib.contextmanager
def te_attention_log() -> Iterator[list[str]]:
    """Collect TE's backend-selection lines (NVTE_DEBUG=1 NVTE_DEBUG_LEVEL=1, set before TE is
    imported) while the block runs; they still reach TE's own handler."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if any(key in message for key in TE_SELECTION):
                lines.append(message)

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in TE_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield lines
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def release() -> None:
    """Return freed GPU memory between checks, so each one's peak is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
