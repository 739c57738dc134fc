"""Tokenizer files travel with the weights, after a check that they fit the embedding."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from megatron_chimed.checkpoint.layout import TOKENIZER_FILES
from megatron_chimed.config.schema import ModelConfig
from megatron_chimed.tokenizer import ZiyaTokenizer

log = logging.getLogger(__name__)


def check_tokenizer(directory: Path, model: ModelConfig, where: str) -> bool:
    """True if `directory` holds a tokenizer whose ids all have an embedding row; raise if
    some do not (the model would index past its embedding). False if there is none."""
    if not (directory / "tokenizer.model").is_file():
        log.warning("%s: no tokenizer.model; the output will have no tokenizer", directory)
        return False
    size = ZiyaTokenizer(directory).vocab_size
    if size > model.vocab_size:
        raise ValueError(
            f"{directory}: the tokenizer has {size} tokens but the embedding has only "
            f"{model.vocab_size} rows ({where} vocab_size)"
        )
    return True


def copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
