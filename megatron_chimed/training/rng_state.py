"""Every RNG stream of a rank, saved as tensors so that a resume never unpickles it.

Python's `random` and numpy's MT19937 states become int64 tensors (their words, position and
cached Gaussian as float64 bits), torch's CPU and CUDA states and megatron's tracker streams are
uint8 tensors already. Each is one ShardedTensor `rng.<stream>` of shape (TP, n): one row per TP
rank, DP replicas hold the same streams (replica_id = DP rank), so a resume at another DP size
reads them back. A checkpoint written before holds one pickled ShardedObject `rng_state`, read
with the weights-only unpickler and numpy's array globals (checkpoint/safe_load.py).
"""

from __future__ import annotations

import logging
import random
import struct
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("megatron_chimed.train")

PREFIX = "rng."
LEGACY_KEY = "rng_state"
# What an old `rng_state` object needs beyond weights-only: numpy's MT19937 key array.
LEGACY_GLOBALS = (
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
)


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def capture() -> dict[str, torch.Tensor]:
    """This rank's streams, by name."""
    from megatron.core import tensor_parallel

    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    streams = {
        "python": torch.tensor(
            [version, *words, gauss is not None, _bits(gauss or 0.0)], dtype=torch.int64
        ),
        "numpy": torch.tensor([*keys.tolist(), pos, has_gauss, _bits(cached)], dtype=torch.int64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        streams["cuda"] = torch.cuda.get_rng_state()
    for name, state in tensor_parallel.get_cuda_rng_tracker().get_states().items():
        streams[f"tracker.{name}"] = state.cpu()
    return streams


def restore(streams: dict[str, torch.Tensor]) -> None:
    """Set the streams `capture` returned (after a load: whichever the checkpoint had)."""
    from megatron.core import tensor_parallel

    if "python" in streams:
        v = streams["python"].tolist()
        random.setstate((v[0], tuple(v[1:-2]), _float(v[-1]) if v[-2] else None))
    if "numpy" in streams:
        v = streams["numpy"].tolist()
        keys = np.array(v[:-3], dtype=np.uint32)
        np.random.set_state(("MT19937", keys, v[-3], v[-2], _float(v[-1])))
    if "torch" in streams:
        torch.set_rng_state(streams["torch"].cpu())
    if "cuda" in streams and torch.cuda.is_available():
        torch.cuda.set_rng_state(streams["cuda"].cpu())
    tracker = {k[len("tracker.") :]: v for k, v in streams.items() if k.startswith("tracker.")}
    if tracker:
        tensor_parallel.get_cuda_rng_tracker().set_states(tracker)


def sharded(streams: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The streams as ShardedTensors: row TP rank of `rng.<name>`."""
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    dp_rank = parallel_state.get_data_parallel_rank()
    return {
        name: ShardedTensor.from_rank_offsets(
            PREFIX + name, state, (0, tp_rank, tp), replica_id=dp_rank, prepend_axis_num=1
        )
        for name, state in streams.items()
    }


def load_request(index: Any, ckpt_dir: Any) -> tuple[str, Any]:
    """What to ask the checkpoint for, from its DCP index: ("tensors", ShardedTensors of the
    streams it holds at this TP size), ("legacy", the old ShardedObject) or ("none", None)."""
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    saved = index.state_dict_metadata
    ours = capture()
    request = {
        name: tensor
        for name, tensor in sharded(ours).items()
        if getattr(saved.get(PREFIX + name), "size", None) == torch.Size((tp, ours[name].numel()))
    }
    legacy = f"{LEGACY_KEY}/shard_{tp_rank}_{tp}"
    skipped = sorted(set(ours) - set(request))
    if request and not skipped:
        return "tensors", request
    if not request and legacy in saved:
        return "legacy", ShardedObject(
            LEGACY_KEY, None, (tp,), (tp_rank,), replica_id=parallel_state.get_data_parallel_rank()
        )
    if dist.get_rank() == 0:
        # A TP or device change: streams are per TP rank and device, there is nothing to map.
        log.warning("%s: no saved RNG state for %s at TP=%d: those streams start afresh",
                    ckpt_dir, ", ".join(skipped), tp)  # fmt: skip
    return ("tensors", request) if request else ("none", None)


def restore_legacy(state: dict[str, Any]) -> None:
    """Set the streams of an old pickled `rng_state` object."""
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
