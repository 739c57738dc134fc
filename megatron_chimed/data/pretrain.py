"""Pre-training data: megatron-core GPTDataset over indexed datasets, blended and split.

`conf/data/*.yaml` lists `blend` as alternating weight, prefix (Megatron-LM's --data-path):
`[0.97, data/cmd_encyclopedia_text_document, 0.03, data/cmd_book_text_document]`, and `split`
as train,valid,test weights ("969,30,1"). Prefixes come from tools/preprocess_data.py.

Megatron gives each split a contiguous range of every prefix's documents; a split with a weight
but no document makes its index builder loop forever (an epoch of 0 tokens never reaches the
samples asked for), so the splits are checked, with megatron's own arithmetic, before it runs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_chimed.tokenizer import Tokenizer


@dataclass
class PretrainDataConfig:
    blend: list[Any] = field(default_factory=list)  # weight, prefix, weight, prefix, ...
    split: str = "969,30,1"
    # Megatron's index cache; null: the folder the stage passes to build_pretrain_datasets (the
    # run's `<run_dir>/cache/index`), so a read-only data folder works.
    cache_dir: str | None = None


SPLIT_NAMES = ("train", "valid", "test")


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
        # Megatron would fail on it with "cannot mmap an empty file", naming neither.
        if Path(prefix + ".bin").stat().st_size == 0:
            raise ValueError(
                f"data.blend: {prefix}.bin is empty (0 bytes): no documents; "
                "re-run tools/preprocess_data.py on the corpus"
            )
    return prefixes, [float(w) for w in weights]


def _split_weights(split: str) -> list[str]:
    """The weights of a split string as megatron reads them (any separator, missing = 0)."""
    weights = re.findall(r"[.0-9]+", split)  # megatron's parse_and_normalize_split
    if len(weights) > len(SPLIT_NAMES) or not any(float(w) > 0 for w in weights):
        raise ValueError(f'data.split="{split}": expected up to 3 weights, one of them > 0')
    return weights + ["0"] * (len(SPLIT_NAMES) - len(weights))


def split_documents(split: str, documents: int) -> list[int | None]:
    """How many of a prefix's `documents` megatron gives each split (None: weight 0, a split
    megatron does not build)."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    _split_weights(split)
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    # The same rounding as megatron's BlendedMegatronDatasetBuilder._build_megatron_dataset_splits.
    return [
        None if ends is None else round(ends[1] * documents) - round(ends[0] * documents)
        for ends in matrix
    ]


def _working_split(split: str, documents: dict[str, int]) -> str | None:
    """`split` with the weight of each split that gets no document set to 0 (again while that
    empties another), or None when the train split itself would be empty."""
    weights = _split_weights(split)
    for _ in SPLIT_NAMES:
        candidate = ",".join(weights)
        empty = {
            i
            for count in documents.values()
            for i, got in enumerate(split_documents(candidate, count))
            if got == 0
        }
        if not empty:
            return candidate
        if 0 in empty:
            return None
        weights = ["0" if i in empty else w for i, w in enumerate(weights)]
    return None


def check_splits(split: str, documents: dict[str, int]) -> None:
    """Refuse a split that gives some prefix's train, valid or test part no document (megatron
    would hang building it); `documents` is the document count per prefix."""
    for prefix, count in documents.items():
        for name, got in zip(SPLIT_NAMES, split_documents(split, count)):
            if got != 0:
                continue
            working = _working_split(split, documents)
            advice = (
                f'e.g. data.split="{working}" (a split of weight 0 is not built)'
                if working
                else "give the train split a larger weight"
            )
            raise ValueError(
                f'data.split="{split}": the {name} split gets 0 of the {count} documents of '
                f"{prefix}, and megatron cannot build an empty split; change data.split, "
                f"{advice}, or add documents"
            )


def document_count(prefix: str) -> int:
    """Documents (megatron's sequences, the unit its splits count) in an indexed dataset."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return len(IndexedDataset(prefix))


def build_pretrain_datasets(
    data: PretrainDataConfig,
    tokenizer: Tokenizer,
    seq_length: int,
    seed: int,
    num_samples: tuple[int, int, int],
    cache_dir: str | os.PathLike | None = None,
) -> list[Any]:
    """[train, valid, test] GPTDatasets (None for a split of weight 0); call on every rank.

    Megatron's index cache goes to `data.cache_dir` if set, else to `cache_dir` (a stage passes
    `<run_dir>/cache/index`), else beside the first prefix.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    prefixes, weights = parse_blend(data.blend)
    check_splits(data.split, {prefix: document_count(prefix) for prefix in prefixes})
    cache = data.cache_dir or cache_dir or Path(prefixes[0]).parent / "index-cache"
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=(prefixes, weights),
        split=data.split,
        path_to_cache=str(cache),
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
