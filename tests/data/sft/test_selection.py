"""Sampling before encoding: `KeepCheck` vouches only for records the encoder keeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron_chimed.data.sft.encode import Encoder, EncodeStats
from megatron_chimed.data.sft.readers import read_source
from megatron_chimed.data.sft.selection import KeepCheck, choose, selects_subset
from megatron_chimed.data.template import DOCTOR_INSTRUCTION, get_template
from megatron_chimed.tokenizer import load_tokenizer

# Byte-fallback characters (emoji, rare CJK), runs of spaces, full-width forms, tags as text.
TRICKY = ["😀😃🙈" * 5, "䶮𠀀𪚥 龘靐", "a    b\t\tc\n\n", "ＡＢＣ１２３，。", "<human>是文字",
          "x" * 30]  # fmt: skip


def sample_records(cfg) -> list[tuple[dict, str | None]]:
    return [
        (record, record.get("system") or source.instruction or None)
        for source in cfg.sources
        for record in read_source(source, EncodeStats())
    ]


@pytest.mark.parametrize("truncate", [False, True])
def test_a_record_vouched_for_is_kept(sample_mix, tok, truncate: bool) -> None:
    records = sample_records(sample_mix()) + sample_records(sample_mix(own=True))
    records += [({"messages": [{"role": "user", "content": "问"},
                               {"role": "assistant", "content": t}], "source": "t"}, None)
                for t in TRICKY]  # fmt: skip
    vouched = {}
    for budget in (32, 64, 1024):
        encoder = Encoder(get_template("ziya"), tok, budget, truncate)
        check = KeepCheck(encoder)
        for record, instruction in records:
            for given in (instruction, DOCTOR_INSTRUCTION * 3):
                if check.surely_kept(record, given):
                    vouched[budget] = vouched.get(budget, 0) + 1
                    assert encoder(record, given, EncodeStats()) is not None, (budget, record)
    # Useful, not only safe: with room to spare, nearly every record is vouched for.
    assert vouched[32] < vouched[64] < vouched[1024]
    assert vouched[1024] >= 0.95 * 2 * len(records)


def test_the_token_bound_holds_for_tricky_text(tok) -> None:
    for text in TRICKY:
        assert len(tok.encode(text)) <= len(tok.sp.normalize(text).encode()) + 1, text


def test_no_vouching_for_templates_or_tokenizers_it_cannot_bound(
    tok, tiny_chatml: Path, sample_mix
) -> None:
    record = {"messages": [{"role": "user", "content": "问"},
                           {"role": "assistant", "content": "答"}], "source": "s"}  # fmt: skip
    assert KeepCheck(Encoder(get_template("ziya_brackets"), tok, 4096)).surely_kept(record, None)
    assert not KeepCheck(Encoder(get_template("hf"), tok, 4096)).supported
    fast = load_tokenizer(tiny_chatml)
    assert not KeepCheck(Encoder(get_template("hf"), fast, 4096)).surely_kept(record, None)
    odd = {"messages": record["messages"][:1], "source": "s"}  # no response
    assert not KeepCheck(Encoder(get_template("ziya"), tok, 4096)).surely_kept(odd, None)


def test_choose_caps_then_weighs() -> None:
    rng = np.random.default_rng(0)
    picked = choose(10, 4, 2.5, rng)
    assert len(picked) == 10 and len(set(picked.tolist())) == 4
    assert selects_subset(4, 1.0) and selects_subset(None, 0.5)
    assert not selects_subset(None, 1.0) and not selects_subset(None, 2.5)
