"""Pre-training data: megatron-core GPTDataset over indexed datasets, blended and split.

`conf/data/*.yaml` lists `blend` as alternating weight, prefix (Megatron-LM's --data-path):
`[0.97, data/cmd_encyclopedia_text_document, 0.03, data/cmd_book_text_document]`, and `split`
as train,valid,test weights ("969,30,1"). Prefixes come from tools/preprocess_data.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_chimed.tokenizer import ZiyaTokenizer


@dataclass
class PretrainDataConfig:
    blend: list[Any] = field(default_factory=list)  # weight, prefix, weight, prefix, ...
    split: str = "969,30,1"
    cache_dir: str | None = None  # index cache; default: beside the first prefix


def parse_blend(blend: list[Any]) -> tuple[list[str], list[float]]:
    """[w1, p1, w2, p2, ...] -> ([p1, p2], [w1, w2]), checking the files exist."""
    if not blend or len(blend) % 2:
        raise ValueError(f"data.blend={blend!r}: expected weight, prefix pairs")
    weights, prefixes = blend[0::2], [str(p) for p in blend[1::2]]
    for i, weight in enumerate(weights):
        if not isinstance(weight, (int, float)) or weight <= 0:
            raise ValueError(f"data.blend[{2 * i}]={weight!r}: a weight must be a number > 0")
    for prefix in prefixes:
        for ext in (".bin", ".idx"):
            if not Path(prefix + ext).is_file():
                raise FileNotFoundError(
                    f"data.blend: {prefix}{ext} not found (make it with tools/preprocess_data.py)"
                )
    return prefixes, [float(w) for w in weights]


def build_pretrain_datasets(
    data: PretrainDataConfig,
    tokenizer: ZiyaTokenizer,
    seq_length: int,
    seed: int,
    num_samples: tuple[int, int, int],
) -> list[Any]:
    """[train, valid, test] GPTDatasets (None for an empty split); call on every rank."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    prefixes, weights = parse_blend(data.blend)
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=(prefixes, weights),
        split=data.split,
        path_to_cache=data.cache_dir or str(Path(prefixes[0]).parent / "index-cache"),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        # The causal mask is built inside attention; materialising it per sample wastes memory.
        create_attention_mask=False,
    )
    return BlendedMegatronDatasetBuilder(
        GPTDataset, list(num_samples), lambda: True, config
    ).build()
