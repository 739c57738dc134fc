"""Chinese BLEU/ROUGE against numbers worked out by hand on tiny pairs."""

from __future__ import annotations

import math

import pytest

from megatron_chimed.eval.text_metrics import bleu_scores, rouge_scores, tokenize_zh


def test_zh_tokens_are_characters_but_latin_words_stay_whole():
    assert tokenize_zh("查CT和血常规。") == ["查", "CT", "和", "血", "常", "规", "。"]


def test_one_pair_by_hand():
    # hyp 5 chars, ref 6: every unigram matches (p1 = 5/5); bigrams 建议 议多 多喝 match,
    # 喝水 does not (p2 = 3/4); brevity penalty exp(1 - 6/5).
    scores = bleu_scores(["建议多喝水"], ["建议多喝温水"])
    bp = math.exp(1 - 6 / 5)
    assert scores["bleu1"] == pytest.approx(100 * bp, abs=1e-6)  # 81.873
    assert scores["bleu2"] == pytest.approx(100 * bp * math.sqrt(3 / 4), abs=1e-6)  # 70.903
    rouge = rouge_scores(["建议多喝水"], ["建议多喝温水"])
    assert rouge["rouge1"] == pytest.approx(100 * 10 / 11)  # P 1, R 5/6
    assert rouge["rouge2"] == pytest.approx(100 * 2 / 3)  # P 3/4, R 3/5
    assert rouge["rougeL"] == pytest.approx(100 * 10 / 11)  # LCS = 5 chars


def test_corpus_bleu_pools_counts_and_rouge_averages_pairs():
    hyps, refs = ["建议多喝水", "多喝水"], ["建议多喝温水", "多喝水"]
    # unigrams 8/8, bigrams (3+2)/(4+2), lengths 8 vs 9
    bp = math.exp(1 - 9 / 8)
    scores = bleu_scores(hyps, refs)
    assert scores["bleu1"] == pytest.approx(100 * bp, abs=1e-6)  # 88.250
    assert scores["bleu2"] == pytest.approx(100 * bp * math.sqrt(5 / 6), abs=1e-6)  # 80.561
    sentence = bleu_scores(hyps, refs, level="sentence")
    assert sentence["bleu2"] == pytest.approx((100 * math.exp(-0.2) * math.sqrt(0.75) + 100) / 2)
    rouge = rouge_scores(hyps, refs)
    assert rouge["rouge1"] == pytest.approx(100 * (10 / 11 + 1) / 2)
    assert rouge["rouge2"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_rouge_counts_latin_word_as_one_token():
    # hyp [查, CT], ref [查, CT, 和, 血, 常, 规]: P 1, R 1/3 -> F 0.5 (per character: 0.6)
    assert rouge_scores(["查CT"], ["查CT和血常规"])["rouge1"] == pytest.approx(50.0)


def test_no_overlap_and_empty_output_score_zero():
    assert bleu_scores(["你好"], ["再见"])["bleu1"] == 0.0
    assert rouge_scores([""], ["再见"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu_scores(["a", "b"], ["a"])


def test_bleu4_by_hand():
    # hyp 建议多喝水 vs ref 建议多喝温水: p1 5/5, p2 3/4 (建议 议多 多喝), p3 2/3 (建议多 议多喝),
    # p4 1/2 (建议多喝); geometric mean (1 * 3/4 * 2/3 * 1/2)^(1/4) = (1/4)^(1/4) = 1/sqrt(2).
    expected = 100 * math.exp(1 - 6 / 5) / math.sqrt(2)  # 57.893
    assert bleu_scores(["建议多喝水"], ["建议多喝温水"])["bleu4"] == pytest.approx(expected)
    # Every order has a match, so sentence BLEU's smoothing changes nothing.
    sentence = bleu_scores(["建议多喝水"], ["建议多喝温水"], level="sentence")
    assert sentence["bleu4"] == pytest.approx(expected)
