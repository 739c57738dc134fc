"""CUDA graphs for the dynamic engine on a model that was built without them.

megatron-core attaches a `CudaGraphManager` to each TransformerLayer when the model is built
with `cuda_graph_impl="local"`; the dynamic engine then captures one graph per decode batch
size and replays it each step (one launch per layer instead of dozens of kernels from Python).
Our models are built for training and the static engine (`cuda_graph_impl="none"`), so
`enabled` turns the same switch on an existing model: the config's impl and scope, and a
manager per layer, as megatron's `GraphableMegatronModule.__init__` would have made them.

While they are attached, a layer called outside the dynamic engine would try its graphs too
(a static-KV decode step raises, a training step would capture), so `disabled` detaches
them for everything else: `decode.py`'s static engine runs under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_STASH = "_chimed_cudagraph_manager"


def _layers(core: torch.nn.Module) -> list[torch.nn.Module]:
    from megatron.core.transformer.transformer_layer import TransformerLayer

    return [m for m in core.modules() if isinstance(m, TransformerLayer)]


def prepare(core: torch.nn.Module, enabled: bool) -> None:
    """Attach (enabled) or detach the layers' graph managers and set the config to match.
    Graphs captured by an earlier engine stay with their managers across a detach."""
    from megatron.core.transformer.cuda_graphs import annotate_first_last_layer
    from megatron.core.transformer.enums import InferenceCudaGraphScope
    from megatron.core.transformer.transformer_block import TransformerBlock

    config = core.config
    if not enabled:
        for layer in _layers(core):
            if hasattr(layer, "cudagraph_manager"):
                object.__setattr__(layer, _STASH, layer.cudagraph_manager)
                del layer.cudagraph_manager
        config.cuda_graph_impl = "none"
        config.inference_cuda_graph_scope = InferenceCudaGraphScope.none
        return
    config.cuda_graph_impl = "local"
    config.inference_cuda_graph_scope = InferenceCudaGraphScope.layer
    for block in core.modules():
        if isinstance(block, TransformerBlock):
            annotate_first_last_layer(block.layers)
    for layer in _layers(core):
        stashed = getattr(layer, _STASH, None)
        if stashed is not None:
            layer.cudagraph_manager = stashed
            object.__setattr__(layer, _STASH, None)
        elif not hasattr(layer, "cudagraph_manager"):
            layer.create_mcore_cudagraph_manager(config)


def has_graphs(core: torch.nn.Module) -> bool:
    config = getattr(core, "config", None)  # scripted test models have none
    return getattr(config, "cuda_graph_impl", "none") == "local"


@contextlib.contextmanager
def disabled(core: torch.nn.Module) -> Iterator[None]:
    """Run without the dynamic engine's graphs (the static engine), restoring them after."""
    if not has_graphs(core):
        yield
        return
    prepare(core, False)
    try:
        yield
    finally:
        prepare(core, True)


def remove(core: torch.nn.Module) -> None:
    """Drop every graph: megatron's process-wide record of captured graphs (which holds the
    layers and the buffers they captured, the KV pool included), the layers' managers, and the
    config switch. After it the model is as built, and its memory can be freed."""
    from megatron.core.transformer.cuda_graphs import delete_cuda_graphs

    delete_cuda_graphs()
    prepare(core, False)
    for layer in _layers(core):
        if hasattr(layer, _STASH):
            object.__setattr__(layer, _STASH, None)
