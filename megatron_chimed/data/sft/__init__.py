"""SFT data: readers for every source format, encoding with the chat template, first-fit
packing and the cached packed dataset (paper section 2.2). The formats: docs/data_formats.md §SFT.
"""

from megatron_chimed.data.jsonio import DataError
from megatron_chimed.data.sft.config import SFTDataConfig, SourceConfig, load_data_config
from megatron_chimed.data.sft.dataset import Epochs, PackedSFTDataset, packed_sft_dataset
from megatron_chimed.data.sft.packing import block_causal_mask, packed_seq_params
from megatron_chimed.data.sft.readers import READERS, get_reader

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
