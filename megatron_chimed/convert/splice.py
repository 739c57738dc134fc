"""Conversion as byte ranges of the input files, copied to the output without building tensors.

Every mapping entry moves whole rows (a rename, vocab padding, the per-group QKV interleave, the
[gate; up] concatenation), and a stored tensor keeps its rows contiguous and row-major. So each
output tensor is a list of (file, offset, length) ranges of the input files, which the output
file reads straight into its write buffer (`DirectFile.copy_segments`): no tensor is built, and
memory stays at the output's one buffer. The row lists come from running the mapping's own
`to_megatron` / `to_hf` on a column of row numbers, so no second description of the layouts
exists to drift from the first. A dtype change, or a tensor stored in column blocks (a
row-parallel weight saved at TP > 1), still goes through the buffer path.

Measured on 13B-shaped bf16 checkpoints: no faster than building each tensor in reused buffers,
but it keeps a conversion's peak RSS at 0.85 GiB instead of 1.4-2.0 GiB (torch and megatron
alone take 0.83 GiB), so it stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_chimed.config.schema import ModelConfig
from megatron_chimed.convert.direct_file import Segment
from megatron_chimed.convert.mapping import Entry

Run = tuple[int, int, int]  # (source part, first row, rows); part -1 = rows of zeros


def num_rows(shape: tuple[int, ...]) -> int:
    """Rows a mapping moves: a 1-D tensor (a norm) moves as one row."""
    return shape[0] if len(shape) > 1 else 1


def _runs(ids: torch.Tensor, starts: list[int]) -> list[Run]:
    """Maximal runs of consecutive source rows. Row r of part p is numbered starts[p] + r + 1, so
    the 0s a mapping pads with mark zero rows, and a run never crosses into the next part."""
    ids = ids.reshape(-1)
    bounds = torch.tensor(starts[1:], dtype=torch.long)
    part = torch.where(ids == 0, -1, torch.bucketize(ids - 1, bounds, right=True))
    breaks = torch.ones_like(ids, dtype=torch.bool)
    breaks[1:] = (part[1:] != part[:-1]) | ((ids[1:] != ids[:-1] + 1) & (ids[1:] != 0))
    firsts = breaks.nonzero().reshape(-1).tolist() + [ids.numel()]
    runs = []
    for begin, end in zip(firsts, firsts[1:]):
        p = int(part[begin])
        first = 0 if p < 0 else int(ids[begin]) - 1 - starts[p]
        runs.append((p, first, end - begin))
    return runs


def _row_ids(counts: list[int]) -> tuple[list[torch.Tensor], list[int]]:
    starts = [0]
    for count in counts[:-1]:
        starts.append(starts[-1] + count)
    # One column: the mappings only reshape rows (their last dim is read from the tensor).
    ids = [torch.arange(s + 1, s + c + 1).reshape(c, 1) for s, c in zip(starts, counts)]
    return ids, starts


def to_megatron_runs(entry: Entry, cfg: ModelConfig) -> list[Run]:
    """The megatron tensor's rows, as runs of rows of the entry's HF tensors (parts)."""
    ids, starts = _row_ids([num_rows(s) for s in entry.hf_shapes(cfg)])
    runs = _runs(entry.to_megatron(ids, cfg), starts)
    if sum(n for _, _, n in runs) != num_rows(entry.megatron_shape(cfg)):
        raise AssertionError(f"{entry.megatron}: the row plan does not cover the tensor")
    return runs


def to_hf_runs(entry: Entry, cfg: ModelConfig) -> list[list[Run]]:
    """Each HF tensor's rows, as runs of rows of the megatron tensor (part 0)."""
    ids, starts = _row_ids([num_rows(entry.megatron_shape(cfg))])
    return [_runs(part, starts) for part in entry.to_hf(ids[0], cfg)]


@dataclass(frozen=True)
class RowBlock:
    first: int  # first row of the tensor held here
    count: int
    path: Path
    offset: int  # where that row's bytes start in `path`


@dataclass(frozen=True)
class RowSource:
    """Where the rows of one stored tensor are: one block (a safetensors tensor) or several
    (the row chunks of a checkpoint saved at TP > 1)."""

    row_bytes: int
    blocks: tuple[RowBlock, ...]

    def segments(self, first: int, count: int) -> list[Segment]:
        out = []
        for block in self.blocks:
            lo, hi = max(first, block.first), min(first + count, block.first + block.count)
            if lo < hi:
                start = block.offset + (lo - block.first) * self.row_bytes
                out.append((block.path, start, (hi - lo) * self.row_bytes))
        if sum(length for _, _, length in out) != count * self.row_bytes:
            raise ValueError(f"rows [{first}, {first + count}) are not all stored")
        return out


def row_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) // num_rows(shape) * dtype.itemsize


def segments(runs: list[Run], sources: list[RowSource]) -> list[Segment]:
    """The byte ranges of `runs`; zero runs take the row size of the first source."""
    out: list[Segment] = []
    for part, first, count in runs:
        if part < 0:
            out.append((None, 0, count * sources[0].row_bytes))
        else:
            out.extend(sources[part].segments(first, count))
    return out


@dataclass(frozen=True)
class Spliced:
    """A tensor to be written as byte ranges of other files instead of from memory."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    segments: list[Segment]

    @property
    def nbytes(self) -> int:
        return sum(length for _, _, length in self.segments)
