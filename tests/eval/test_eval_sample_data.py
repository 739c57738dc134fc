"""Every eval reader over the bundled sample files (megatron_chimed/sample_data/eval)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_chimed.eval.bias import load_scale
from megatron_chimed.eval.multichoice_data import load_split
from megatron_chimed.eval.ner_data import CCKS_LABELS, read_bio, read_ccks2019
from megatron_chimed.eval.open_qa import read_chimed_qa, read_mc_dialogues

SAMPLES = Path(__file__).resolve().parents[2] / "megatron_chimed" / "sample_data" / "eval"
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="bundled sample data not present")


@pytest.mark.parametrize(
    ("data_format", "subject", "shot_split", "scored_split", "letters"),
    [
        ("ceval", "basic_medicine", "dev", "val", "ABCD"),
        ("ceval", "clinical_medicine", "dev", "val", "ABCD"),
        ("cmmlu", "anatomy", "dev", "test", "ABCD"),
        ("cmmlu", "clinical_knowledge", "dev", "test", "ABCD"),
        ("medqa", "mcmle", "train", "test", "ABCDE"),
    ],
)
def test_multichoice_samples(data_format, subject, shot_split, scored_split, letters):
    shots = load_split(data_format, SAMPLES / data_format, subject, shot_split)
    scored = load_split(data_format, SAMPLES / data_format, subject, scored_split)
    assert (len(shots), len(scored)) == (5, 8)
    assert all("".join(q.options) == letters and q.answer in letters for q in shots + scored)


def test_ccks_samples():
    train = read_ccks2019(SAMPLES / "ccks2019" / "subtask1_training_part1.txt")
    test = read_ccks2019(SAMPLES / "ccks2019" / "subtask1_test_set_with_answer.json")
    assert (len(train), len(test)) == (10, 8)
    labels = {label for doc in train + test for _, label in doc.entities}
    assert labels <= set(CCKS_LABELS) and len(labels) >= 4
    assert not any(doc.text.startswith("\ufeff") for doc in train + test)


def test_chimst_samples():
    train = read_bio(SAMPLES / "chimst" / "train.bio")
    test = read_bio(SAMPLES / "chimst" / "test.bio")
    assert (len(train), len(test)) == (8, 6)
    labels = {label for doc in train for _, label in doc.entities}
    assert labels <= {"症状", "部位", "药物", "检查", "疾病"}
    assert ("胃痛", "症状") in train[0].entities


def test_open_generation_samples():
    items, skipped = read_chimed_qa(SAMPLES / "chimed_test.jsonl")
    assert len(items) + skipped == 5 and all(i.reference for i in items)
    dialogues = read_mc_dialogues(SAMPLES / "mc_test.json", turns="last")
    assert len(dialogues) == 5
    assert all(d.prompt_body.startswith("P: ") for d in dialogues)


@pytest.mark.parametrize(("name", "points"), [("example_cami_like", 5), ("example_mica_like", 6)])
def test_bias_samples(name, points):
    scale = load_scale(SAMPLES / "bias" / f"{name}.json")
    assert len(scale.options) == points and len(scale.items) == 6
    assert {item.keying for item in scale.items} == {"agree_biased", "disagree_biased"}
