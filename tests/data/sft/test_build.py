"""Building the packed cache: the draws made before encoding are the ones made after encoding
everything (the behaviour before sampling moved ahead of encoding), with fewer records encoded;
worker processes give the same bytes as one process."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from megatron_chimed.data.sft import build, cache
from megatron_chimed.data.sft.dataset import PackedSFTDataset, cache_content, packed_sft_dataset
from megatron_chimed.data.sft.encode import Encoder, EncodeStats
from megatron_chimed.data.sft.packing import first_fit
from megatron_chimed.data.sft.readers import read_source
from megatron_chimed.data.template import get_template

# Source caps and weights over the sample mix (cmd, chimed, mc, meddialog_raw, meddialog,
# safety, sharegpt): whole and fractional weights, caps with and without encoder drops.
MIXES = {
    "caps": (256, False, {"s0": {"max_samples": 3}, "s1": {"weight": 0.5}, "s2": {"weight": 1.5},
                          "s4": {"max_samples": 5, "weight": 2.0},
                          "s6": {"max_samples": 7, "weight": 0.7}}),
    # 48 tokens: most QA records are too long, dialogues lose history and questions.
    "drops": (48, False, {"s0": {"max_samples": 3}, "s1": {"weight": 0.5},
                          "s3": {"max_samples": 4}, "s4": {"max_samples": 5, "weight": 2.0},
                          "s6": {"max_samples": 7, "weight": 0.7}}),
    "truncate": (40, True, {"s0": {"max_samples": 4}, "s1": {"weight": 0.6},
                            "s5": {"max_samples": 6}}),
}  # fmt: skip


def encode_everything_first(cfg, tok) -> tuple[list[list[tuple]], EncodeStats]:
    """The rows as the cache was built before: every record encoded, then each source's draw
    among the kept ones (cap, then weight), then shuffle, first-fit packing, row shuffle."""
    encoder = Encoder(get_template(cfg.template), tok, cfg.seq_length + 1, cfg.truncate_response)
    rng = np.random.default_rng(cfg.seed)
    stats, samples = EncodeStats(), []
    for source in cfg.sources:
        encoded = []
        for record in read_source(source, stats):
            out = encoder(record, record.get("system") or source.instruction or None, stats)
            if out is not None:
                encoded.append(out)
        base = np.arange(len(encoded))
        if source.max_samples is not None and source.max_samples < len(encoded):
            base = np.sort(rng.permutation(len(encoded))[: source.max_samples])
        whole, fraction = divmod(source.weight, 1.0)
        extra = rng.permutation(base)[: round(fraction * len(base))]
        samples += [encoded[i] for i in np.concatenate([base] * int(whole) + [extra])]
    rng = np.random.default_rng([cfg.seed, 1])
    samples = [samples[i] for i in rng.permutation(len(samples))]
    bins = first_fit([len(ids) for ids, _ in samples], cfg.seq_length + 1)
    bins = [bins[i] for i in rng.permutation(len(bins))]
    return [[samples[i] for i in b] for b in bins], stats


def rows_of(ds: PackedSFTDataset) -> list[list[tuple]]:
    return [[(ids.tolist(), mask.tolist()) for ids, mask in ds.samples(r)] for r in range(len(ds))]


@pytest.mark.parametrize("mix", MIXES)
def test_draws_before_encoding_equal_encoding_everything_first(sample_mix, tok, mix) -> None:
    seq_length, truncate, sources = MIXES[mix]
    cfg = sample_mix(seq_length, **sources)
    cfg.truncate_response = truncate
    expected, old_stats = encode_everything_first(cfg, tok)
    ds = packed_sft_dataset(cfg, tok)
    assert rows_of(ds) == expected
    old = old_stats.as_dict()
    for name, counts in ds.stats.items():
        # Drops are counted for every record read, as before.
        assert {k: v for k, v in counts.items() if k.startswith("dropped")} == {
            k: v for k, v in old[name].items() if k.startswith("dropped")
        }
    drawn = cfg.sources[0]  # cmd: 155 records, 3 or 4 drawn
    assert sum(v for k, v in ds.stats[drawn.name].items() if k not in ("samples",)
               and not k.startswith("dropped")) <= drawn.max_samples  # fmt: skip


def test_only_the_drawn_records_are_encoded(sample_mix, tok, monkeypatch) -> None:
    calls: list[str] = []
    encode = Encoder.__call__

    def counting(self, record, instruction, stats):
        calls.append(record["source"])
        return encode(self, record, instruction, stats)

    monkeypatch.setattr(Encoder, "__call__", counting)
    # At 1024 tokens every sample record is short enough to be sure of without encoding it.
    cfg = sample_mix(1024, s0={"max_samples": 3}, s1={"weight": 0.25})
    ds = packed_sft_dataset(cfg, tok)
    assert calls.count("cmd") == 3 and calls.count("chimed") == 10  # of 155 and 40 read
    assert calls.count("mc") == 50  # no cap, no weight: every record
    assert ds.stats["cmd"] == {"kept": 3, "samples": 3}
    assert ds.stats["chimed"] == {"kept": 10, "samples": 10}


def test_per_record_system_prompts_and_own_formats(sample_mix, tok) -> None:
    cfg = sample_mix(64, own=True, s0={"max_samples": 2}, s1={"weight": 0.5},
                     s2={"max_samples": 1})  # fmt: skip
    expected, _ = encode_everything_first(cfg, tok)
    assert rows_of(packed_sft_dataset(cfg, tok)) == expected


def test_workers_give_the_bytes_of_one_process(sample_mix, tok, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger=build.__name__)
    cfg = sample_mix(128, s0={"max_samples": 40}, s6={"weight": 0.5})
    stamps = {}
    for workers in (1, 2):
        prefix = tmp_path / f"w{workers}" / "sft"
        stamps[workers] = build.build_cache(cfg, tok, prefix, lambda: cache_content(cfg, tok),
                                            workers=workers)  # fmt: skip
        assert not [p for p in prefix.parent.iterdir() if p.name.startswith(".")]  # no scratch
    for name in cache.ARRAYS:
        one = cache.array_path(tmp_path / "w1" / "sft", name).read_bytes()
        assert one == cache.array_path(tmp_path / "w2" / "sft", name).read_bytes(), name
    assert stamps[1] == stamps[2] and stamps[1]["samples"] == 194
    assert "(2 workers)" in caplog.text  # the pool ran (a tokenizer mismatch would fall back)


def test_a_file_changed_while_building_is_an_error(sample_mix, tok, tmp_path: Path) -> None:
    cfg = sample_mix(256)
    versions = iter([{"mtime": 1}, {"mtime": 2}])
    with pytest.raises(ValueError, match="changed while the cache was built"):
        build.build_cache(cfg, tok, tmp_path / "c" / "sft", lambda: next(versions), workers=1)
    assert list((tmp_path / "c").iterdir()) == []


def test_pack_order_keeps_every_sample_once_within_capacity() -> None:
    lengths = np.random.default_rng(0).integers(2, 60, size=300)
    order, sizes = build.pack_order(lengths, 64, seed=5)
    assert sorted(order.tolist()) == list(range(300)) and sum(sizes) == 300
    bounds = np.cumsum([0, *sizes])
    assert max(lengths[order[a:b]].sum() for a, b in zip(bounds, bounds[1:])) <= 64
    again, _ = build.pack_order(lengths, 64, seed=5)
    assert np.array_equal(order, again)
