"""HF <-> megatron-core checkpoint conversion, in bounded memory.

`mapping.py` holds the tensor tables (one per HF architecture); `hf_to_megatron` and
`megatron_to_hf` stream through them one tensor (or one layer) at a time; `load_hf_weights`
puts a HF folder straight into a built model at this rank's TP shard.
"""

from megatron_chimed.convert.hf_to_megatron import hf_to_megatron
from megatron_chimed.convert.load_hf import load_hf_weights
from megatron_chimed.convert.mapping import MAPPINGS, ModelMapping, mapping_for
from megatron_chimed.convert.megatron_to_hf import megatron_to_hf

__all__ = [
    "MAPPINGS",
    "ModelMapping",
    "hf_to_megatron",
    "load_hf_weights",
    "mapping_for",
    "megatron_to_hf",
]
