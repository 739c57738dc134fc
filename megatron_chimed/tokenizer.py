"""Text <-> ids for every stage (pre-processing, SFT templates, reward model, generation,
evaluation), from a tokenizer folder: `load_tokenizer(directory)`.

- `tokenizer.model` (+ `added_tokens.json`): `ZiyaTokenizer`, sentencepiece plus added tokens
  (`<human>`, `<bot>`), the files a Ziya / ChiMed-GPT folder ships. It wins when both kinds
  are present, so Ziya keeps exactly the ids it was trained with.
- `tokenizer.json` only (what transformers 5 saves): `fast_tokenizer.FastTokenizer`, the
  `tokenizers` library, with the special tokens named in `tokenizer_config.json` /
  `special_tokens_map.json`.

Both read local files only; no `transformers` tokenizer class and no remote code is involved.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Protocol

import sentencepiece as spm

from megatron_chimed.fast_tokenizer import FastTokenizer, read_chat_template

HUMAN, BOT = "<human>", "<bot>"
#: The files that make a tokenizer, in the order `load_tokenizer` prefers them.
SOURCES = ("tokenizer.model", "tokenizer.json")


class Tokenizer(Protocol):
    """What every stage uses of a tokenizer; `ZiyaTokenizer` and `FastTokenizer` provide it."""

    directory: Path
    vocab_size: int
    bos: int
    eos: int
    eod: int
    pad: int
    unique_identifiers: dict[str, str]
    #: jinja variables of a chat template: `bos_token`, `eos_token`, ... -> their text
    special_tokens: dict[str, str]
    #: the text of every control token (an end of turn is one of them)
    special_strings: tuple[str, ...]
    chat_template: str | None

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int], skip_special: bool = True) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...


def has_tokenizer(directory: str | Path) -> bool:
    return any((Path(directory) / name).is_file() for name in SOURCES)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of a folder: sentencepiece `tokenizer.model` first, else `tokenizer.json`."""
    directory = Path(directory)
    if (directory / "tokenizer.model").is_file():
        return ZiyaTokenizer(directory)
    if (directory / "tokenizer.json").is_file():
        return FastTokenizer(directory)
    raise FileNotFoundError(f"{directory}: no tokenizer.model or tokenizer.json there")


class ZiyaTokenizer:
    """Text <-> ids. Added tokens are matched as whole strings before sentencepiece runs,
    because sentencepiece alone would split `<human>` into `<`, `human`, `>`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        model_file = self.directory / "tokenizer.model"
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file}: no sentencepiece tokenizer.model there")
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.added: dict[str, int] = {}
        added_file = self.directory / "added_tokens.json"
        if added_file.is_file():
            try:
                self.added = {str(k): int(v) for k, v in json.loads(added_file.read_text()).items()}
            except (ValueError, AttributeError) as err:
                raise ValueError(f"{added_file}: not a JSON object of token -> id ({err})") from err
        base = self.sp.get_piece_size()
        beyond = sorted(v for v in self.added.values() if v >= base)
        if beyond != list(range(base, base + len(beyond))):
            # Ids past the sentencepiece model must follow it without holes, as HF assigns them.
            raise ValueError(f"{added_file}: added ids {beyond} do not continue from {base}")
        self._id_to_added = {v: k for k, v in self.added.items() if v >= base}
        # Longest first so that a token that is a prefix of another never wins.
        names = sorted(self.added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None

    @property
    def vocab_size(self) -> int:
        """The true vocabulary: sentencepiece pieces plus added tokens beyond them."""
        return max([self.sp.get_piece_size() - 1, *self.added.values()]) + 1

    @property
    def bos(self) -> int:
        return self.sp.bos_id()

    @property
    def eos(self) -> int:
        return self.sp.eos_id()

    @property
    def eod(self) -> int:
        """End of document in pre-training sequences: Ziya uses `</s>`."""
        return self.eos

    @property
    def pad(self) -> int:
        """Padding id; never trained on (loss masks cover it), so `<unk>` is safe."""
        return self.sp.unk_id()

    @property
    def human(self) -> int:
        return self._tag(HUMAN)

    @property
    def bot(self) -> int:
        return self._tag(BOT)

    def _tag(self, tag: str) -> int:
        if tag not in self.added:
            raise KeyError(f"{self.directory / 'added_tokens.json'}: no {tag} token")
        return self.added[tag]

    def token_to_id(self, token: str) -> int | None:
        """The id of `token` as one piece or added token; None when it has none."""
        if token in self.added:
            return self.added[token]
        idx = self.sp.piece_to_id(token)
        # sentencepiece answers `<unk>`'s id for any unknown piece.
        return idx if idx != self.sp.unk_id() or token == self.sp.id_to_piece(idx) else None

    @cached_property
    def special_tokens(self) -> dict[str, str]:
        return {
            "bos_token": self.sp.id_to_piece(self.bos),
            "eos_token": self.sp.id_to_piece(self.eos),
            "unk_token": self.sp.id_to_piece(self.sp.unk_id()),
        }

    @property
    def special_strings(self) -> tuple[str, ...]:
        return tuple(self.special_tokens.values())

    @cached_property
    def chat_template(self) -> str | None:
        return read_chat_template(self.directory)

    @cached_property
    def unique_identifiers(self) -> dict[str, str]:
        """What megatron's dataset cache hashes: a different tokenizer must not reuse a cache."""
        model_bytes = (self.directory / "tokenizer.model").read_bytes()
        import hashlib

        found = {
            "class": type(self).__name__,
            "sha1": hashlib.sha1(model_bytes).hexdigest(),
            "added": json.dumps(self.added, sort_keys=True),
        }
        if self.chat_template is not None:
            # Only when there is one: Ziya folders have none, and their cache keys stay put.
            found["chat_template"] = hashlib.sha1(self.chat_template.encode()).hexdigest()
        return found

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids: list[int] = [self.bos] if bos else []
        for i, part in enumerate(self._split.split(text) if self._split else [text]):
            if not part:
                continue
            if i % 2 == 1:  # odd pieces of re.split with one group are the matched tokens
                ids.append(self.added[part])
            elif i == 0:
                ids.extend(self.sp.encode(part))
            else:
                ids.extend(self._encode_continuation(part))
        if eos:
            ids.append(self.eos)
        return ids

    def _encode_continuation(self, text: str) -> list[int]:
        """Text right after an added token gets no dummy-prefix space, as `transformers`'
        LlamaTokenizer (legacy=False) does it: prefix a throw-away `<unk>`, drop its pieces.
        Matching HF here means a model trained with this wrapper is served correctly by HF."""
        return self.sp.encode("<unk>" + text)[self._unk_pieces :]

    @cached_property
    def _unk_pieces(self) -> int:
        return len(self.sp.encode("<unk>"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._split is None:
            return self.sp.encode(texts)
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        out: list[str] = []
        run: list[int] = []
        specials = {self.bos, self.eos, self.pad}
        for idx in ids:
            if idx in self._id_to_added:
                out.append(self.sp.decode(run))
                run = []
                if not skip_special:
                    out.append(self._id_to_added[idx])
            elif skip_special and idx in specials:
                continue
            else:
                run.append(idx)
        out.append(self.sp.decode(run))
        return "".join(out)
