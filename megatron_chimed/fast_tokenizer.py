"""An HF fast tokenizer (`tokenizer.json`, the only file transformers 5 saves) behind the same
interface as `ZiyaTokenizer`; `tokenizer.load_tokenizer` picks it when there is no
`tokenizer.model`.

The `tokenizers` library reads the file directly: it holds the whole pipeline (normalizer,
pre-tokenizer, model, added tokens), so encoding matches transformers' `PreTrainedTokenizerFast`
with `add_special_tokens=False`. Which tokens are `<s>`, `</s>` and padding is not in that file
but in `tokenizer_config.json` (or the older `special_tokens_map.json`), read here as
transformers does; so is the chat template (`ZiyaTokenizer` reads it with the same function).
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as RustTokenizer

ROLES = ("bos_token", "eos_token", "unk_token", "pad_token")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when the file is absent."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_chat_template(directory: Path) -> str | None:
    """The folder's jinja chat template, found where transformers saves it: `chat_template.jinja`
    (transformers 5) over `tokenizer_config.json`'s `chat_template` (a string, or a list of
    named templates of which `default` is used). None when there is none."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    found = read_json_object(config).get("chat_template")
    if found is None or isinstance(found, str):
        return found
    if isinstance(found, list):
        named = {t.get("name"): t.get("template") for t in found if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise ValueError(f"{config}: field 'chat_template' is neither a string nor has a 'default'")


def special_token_texts(directory: Path) -> dict[str, str]:
    """`bos_token`, `eos_token`, ... -> token text, from `tokenizer_config.json` over
    `special_tokens_map.json`; a token saved as an AddedToken object gives its `content`."""
    merged = {
        **read_json_object(directory / "special_tokens_map.json"),
        **read_json_object(directory / "tokenizer_config.json"),
    }
    out = {}
    for role in ROLES:
        value = merged.get(role)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[role] = value
    return out


class FastTokenizer:
    """Text <-> ids with a `tokenizer.json`. Added tokens in the text (`<|im_end|>`, `</s>`)
    become their single ids, as with `ZiyaTokenizer`'s added tokens."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no HF fast tokenizer there")
        try:
            self.tk = RustTokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises a bare Exception
            raise ValueError(f"{path}: not a tokenizers JSON file ({err})") from err
        self.special_tokens = special_token_texts(self.directory)
        self.bos = self._special_id("bos_token")
        self.eos = self._special_id("eos_token")
        # Padding is never trained on (loss masks cover it), so any real id serves; prefer the
        # tokenizer's own pad, then `<unk>` as Ziya does, then `</s>`.
        padding = [r for r in ("pad_token", "unk_token") if r in self.special_tokens]
        self.pad = self._special_id(padding[0]) if padding else self.eos
        added = self.tk.get_added_tokens_decoder()
        self.special_strings = tuple(t.content for t in added.values() if t.special)
        self._vocab = self.tk.get_vocab(with_added_tokens=True)

    def _special_id(self, role: str) -> int:
        text = self.special_tokens.get(role)
        if text is None:
            raise ValueError(
                f"{self.directory / 'tokenizer_config.json'}: no {role}; every sequence "
                "megatron-chimed builds starts with <s> and ends with </s>"
            )
        idx = self.tk.token_to_id(text)
        if idx is None:
            raise ValueError(f"{self.directory / 'tokenizer.json'}: {role} {text!r} has no id")
        return idx

    @property
    def vocab_size(self) -> int:
        """Highest id + 1: what the embedding must have rows for, holes included."""
        return max(self._vocab.values()) + 1

    @property
    def eod(self) -> int:
        """End of document in pre-training sequences: `</s>`, as for Ziya."""
        return self.eos

    @cached_property
    def unique_identifiers(self) -> dict[str, str]:
        """What megatron's dataset cache hashes: a different tokenizer must not reuse a cache."""
        tokenizer_bytes = (self.directory / "tokenizer.json").read_bytes()
        # The chat template too: the `hf` template's SFT cache must not outlive an edit of it.
        template = (self.chat_template or "").encode()
        return {
            "class": type(self).__name__,
            "sha1": hashlib.sha1(tokenizer_bytes).hexdigest(),
            "special": json.dumps([self.bos, self.eos, self.pad]),
            "chat_template": hashlib.sha1(template).hexdigest(),
        }

    @cached_property
    def chat_template(self) -> str | None:
        return read_chat_template(self.directory)

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        # add_special_tokens=False: the post-processor's own `<s>` would double ours.
        ids = self.tk.encode(text, add_special_tokens=False).ids
        return [self.bos] * bos + ids + [self.eos] * eos

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        if skip_special:
            # `<unk>` as padding is not always flagged special; drop it as ZiyaTokenizer does.
            skip = {self.bos, self.eos, self.pad}
            ids = [i for i in ids if i not in skip]
        return self.tk.decode(list(ids), skip_special_tokens=skip_special)
