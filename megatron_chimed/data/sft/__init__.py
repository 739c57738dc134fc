"""SFT data: readers for every source format, encoding with the chat template, first-fit
packing and the cached packed dataset (paper section 2.2). The formats: docs/data_formats.md §SFT.

The torch-side names (the dataset, the masks) load on first use, so that the processes that
encode records (sft/pool.py), which import this package, start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from megatron_chimed.data.jsonio import DataError
from megatron_chimed.data.sft.config import SFTDataConfig, SourceConfig, load_data_config
from megatron_chimed.data.sft.readers import READERS, get_reader

if TYPE_CHECKING:
    from megatron_chimed.data.sft.dataset import Epochs, PackedSFTDataset, packed_sft_dataset
    from megatron_chimed.data.sft.packing import block_causal_mask, packed_seq_params

_LAZY = {
    "Epochs": "dataset",
    "PackedSFTDataset": "dataset",
    "packed_sft_dataset": "dataset",
    "block_causal_mask": "packing",
    "packed_seq_params": "packing",
}

__all__ = [
    "READERS",
    "DataError",
    "Epochs",
    "PackedSFTDataset",
    "SFTDataConfig",
    "SourceConfig",
    "block_causal_mask",
    "get_reader",
    "load_data_config",
    "packed_sft_dataset",
    "packed_seq_params",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
