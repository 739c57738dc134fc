"""Tokenizer files travel with the weights (`checkpoint.layout.copy_tokenizer`), after a check
that they fit the embedding."""

from __future__ import annotations

import logging
from pathlib import Path

from megatron_chimed.config.schema import ModelConfig
from megatron_chimed.tokenizer import has_tokenizer, load_tokenizer

log = logging.getLogger(__name__)


def check_tokenizer(directory: Path, model: ModelConfig, where: str) -> bool:
    """True if `directory` holds a tokenizer whose ids all have an embedding row; raise if
    some do not (the model would index past its embedding). False if there is none."""
    if not has_tokenizer(directory):
        log.warning(
            "%s: no tokenizer.model or tokenizer.json; the output will have no tokenizer", directory
        )
        return False
    size = load_tokenizer(directory).vocab_size
    if size > model.vocab_size:
        raise ValueError(
            f"{directory}: the tokenizer has {size} tokens but the embedding has only "
            f"{model.vocab_size} rows ({where} vocab_size)"
        )
    return True
