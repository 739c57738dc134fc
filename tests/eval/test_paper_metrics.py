"""The authors' BLEU/ROUGE reimplemented: equal to nltk 3.10.4 and rouge 1.0.1 on the same
strings (tests/eval/fixtures/paper_metrics), and the script's character split."""

from __future__ import annotations

import json
import warnings

import pytest

from megatron_chimed.eval.paper_metrics import (
    BLEU_WEIGHTS,
    char_split,
    corpus_bleu,
    paper_scores,
    rouge_scores,
)
from megatron_chimed.testing.eval_reference import PAPER_METRICS_FIXTURE, read_reference

REFERENCE = read_reference(PAPER_METRICS_FIXTURE / "reference.json")
PAIRS = [
    json.loads(line)
    for line in (PAPER_METRICS_FIXTURE / "pairs.jsonl").read_text("utf-8").splitlines()
]
OUTPUTS = [p["output"] for p in PAIRS]
REFERENCES = [p["reference"] for p in PAIRS]


def test_split_is_the_script_s_including_its_range_slips():
    assert char_split(" 体温37.5℃，CT正常 ") == " 体  温 37.5 ℃  ， CT 正  常 "
    # The script's "\u20000" range reads as U+2001..U+2A6D: these count as Chinese ...
    assert char_split("≥—…") == " ≥  —  … "
    # ... and the CJK extension B it meant does not, nor does ASCII.
    assert char_split("\U00020000a") == "\U00020000a"
    assert char_split("") == char_split("   ") == "错误"
    assert [char_split(o) for o in OUTPUTS] == REFERENCE["split_outputs"]
    assert [char_split(r) for r in REFERENCES] == REFERENCE["split_references"]


def test_bleu_equals_nltk_on_the_script_s_strings():
    hyps = [list(h) for h in REFERENCE["split_outputs"]]  # the strings' characters, as nltk
    refs = [[list(r)] for r in REFERENCE["split_references"]]
    ours = corpus_bleu(refs, hyps, list(BLEU_WEIGHTS.values()))
    assert ours == pytest.approx(list(REFERENCE["bleu"].values()), rel=1e-12)
    assert list(REFERENCE["bleu"]) == list(BLEU_WEIGHTS)


def test_bleu_equals_the_installed_nltk_too():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    hyps, refs = REFERENCE["split_outputs"], REFERENCE["split_references"]
    weights = list(BLEU_WEIGHTS.values())
    for h, r in zip(hyps, refs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = nltk_bleu.corpus_bleu([[r]], [h], weights=weights)
        assert corpus_bleu([[list(r)]], [list(h)], weights) == pytest.approx(theirs, rel=1e-12)


def test_rouge_equals_the_rouge_package():
    ours, refused = rouge_scores(REFERENCE["split_outputs"], REFERENCE["split_references"])
    assert ours == pytest.approx(REFERENCE["rouge_f"], rel=1e-12)
    assert refused == 0


def test_paper_scores_in_percent():
    metrics, refused = paper_scores(OUTPUTS, REFERENCES)
    names = {"rouge1": "rouge-1", "rouge2": "rouge-2", "rougeL": "rouge-l"}
    expected = {k: 100 * v for k, v in REFERENCE["bleu"].items()}
    expected.update({ours: 100 * REFERENCE["rouge_f"][theirs] for ours, theirs in names.items()})
    assert metrics == pytest.approx(expected, rel=1e-12)
    assert set(metrics) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougeL"}
    assert refused == 0


def test_a_text_the_rouge_package_refuses_scores_zero_and_is_counted():
    # "..." has no sentence for the package (it raises); here it scores 0 and is counted.
    hyps = REFERENCE["split_outputs"] + ["..."]
    refs = REFERENCE["split_references"] + ["多 喝 水"]
    ours, refused = rouge_scores(hyps, refs)
    n = len(REFERENCE["split_outputs"])
    assert refused == 1
    assert ours["rouge-1"] == pytest.approx(REFERENCE["rouge_f"]["rouge-1"] * n / (n + 1))


def test_no_unigram_match_is_zero_and_identical_text_is_one():
    assert corpus_bleu([[list("ab")]], [list("cd")], [(1.0,), (0.5, 0.5)]) == [0.0, 0.0]
    assert corpus_bleu([[list("abcde")]], [list("abcde")], [(0.25,) * 4]) == [1.0]
    scores, _ = rouge_scores(["a b c"], ["a b c"])
    assert scores["rouge-l"] == pytest.approx(1.0, abs=1e-8)
