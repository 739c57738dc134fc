"""Reusable working memory for the converters.

A freshly allocated 400 MB tensor costs ~100k page faults on first touch, which on this kind
of machine is slower than copying the bytes (measured: 0.4-2.9 s vs 0.1 s for the 13B
embedding). So each converter allocates its working buffers once, sized for the largest
tensor, and builds every tensor inside them: RSS stays that size whatever the model size.
"""

from __future__ import annotations

import math
from typing import BinaryIO

import torch


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


class Buffer:
    """One byte buffer, handed out again and again as tensors of any shape and dtype."""

    def __init__(self, size: int) -> None:
        self.bytes = torch.empty(size, dtype=torch.uint8)
        self._array = self.bytes.numpy()

    def tensor(self, shape: tuple[int, ...], dtype: torch.dtype, offset: int = 0) -> torch.Tensor:
        """A tensor over bytes [offset, offset + its size) whose storage is exactly that range
        (torch.frombuffer): PyTorch's checkpoint writer clones a tensor whose storage is larger
        than the tensor, i.e. a plain slice of the buffer, which would defeat the reuse."""
        size = nbytes(shape, dtype)
        if offset + size > len(self._array):
            raise ValueError(f"{shape} {dtype} at {offset} overruns a {len(self._array)} B buffer")
        if size == 0:
            return torch.empty(shape, dtype=dtype)
        view = memoryview(self._array)[offset : offset + size]
        return torch.frombuffer(view, dtype=dtype).view(shape)


def read_exact(f: BinaryIO, start: int, out: memoryview, what: str = "") -> None:
    """Fill `out` with the file's bytes from `start`; `what` names them in the error."""
    f.seek(start)
    done = 0
    while done < len(out):  # readinto may return less than asked
        got = f.readinto(out[done:])
        if not got:
            raise ValueError(f"{f.name}: truncated at byte {start + done}{what}")
        done += got
