"""training/rng_state.py: every stream as a tensor (loadable with weights_only=True), restored
to draw the same numbers again. One process; the resumed runs of test_loop.py check it at TP=2."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from megatron_chimed.training import rng_state


def _draws() -> list:
    return [random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(),
            torch.rand(2).tolist()]  # fmt: skip


def test_streams_are_tensors_and_restore_to_the_same_draws() -> None:
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    random.gauss(0, 1)  # leaves a cached Gaussian in both generators
    np.random.randn()
    streams = rng_state.capture()
    assert {"python", "numpy", "torch"} <= set(streams)
    assert all(isinstance(t, torch.Tensor) for t in streams.values())
    buffer = io.BytesIO()
    torch.save(streams, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=True)  # no pickled objects
    first = _draws()
    rng_state.restore(reloaded)
    assert _draws() == first
