"""The BLEU and ROUGE of the authors' released scoring (protocol `paper`), reimplemented
exactly, with no dependency: their script (Fengshenbang-LM dev_bio,
fengshen/workspace/ziya_llama2_13b_medical/generate.py) splits outputs and references with
`chinese_char_tokenize`, then calls nltk's `corpus_bleu` and the `rouge` package (1.0.1).

What that computes, reproduced here (tests/eval/fixtures/paper_metrics holds nltk 3.10.4's
and rouge 1.0.1's numbers on the same strings, with the command that made them):

- `char_split`: a space on each side of every character the script counts as Chinese. Its
  table of ranges has two five-digit escapes ("\\u20000", "\\u2f800") that Python reads as
  four digits and a "0", which, compared as strings, turn them into U+2001..U+2A6D (general
  punctuation, letter-like symbols, arrows, maths: "—", "…", "℃", "≥") and U+2F81..U+2FA1;
  `_SCRIPT_RANGES` lists the code points the script's test accepts (checked over all of them).
- BLEU: `corpus_bleu([[ref], ...], [hyp, ...])` is given *strings*, so its tokens are the
  characters of the split strings, spaces included. No smoothing (nltk's method0: a zero
  n-gram precision counts as the smallest float); each hypothesis adds at least 1 to every
  order's denominator; the brevity penalty is over the corpus.
- ROUGE: the package splits each text into sentences at ".", each sentence into words at
  single spaces (after collapsing whitespace), and counts *distinct* n-grams (its default
  `exclusive=True`); ROUGE-L is its summary-level union-LCS over distinct words, the LCS read
  back in the package's order. F = 2PR / (P + R + 1e-8), averaged over the pairs.

Where the package would stop, we go on: a text with no sentence (only "." or spaces) raises
ValueError there and scores 0 here (counted), and its recursive LCS read-back exceeds
Python's recursion limit for sentences of about 1000 words together, where ours has none.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence

# Inclusive code-point ranges the script's `is_chinese_char` accepts (see the module doc).
_SCRIPT_RANGES = (
    (0x2001, 0x2A6D),
    (0x2E80, 0x2FDF),
    (0x2FF0, 0x303F),
    (0x3100, 0x312F),
    (0x31A0, 0x31EF),
    (0x3200, 0x4DB5),
    (0x4E00, 0x9FBB),
    (0xF900, 0xFA2D),
    (0xFA30, 0xFA6A),
    (0xFA70, 0xFAD9),
    (0xFE10, 0xFE1F),
    (0xFE30, 0xFE4F),
    (0xFF00, 0xFFEF),
)
EMPTY_TEXT = "错误"  # what the script scores in place of an empty text
# name -> nltk weights: the paper's BLEU-1/2, the script's own second figure, and BLEU-4.
BLEU_WEIGHTS = {
    "bleu1": (1.0, 0.0, 0.0, 0.0),
    "bleu2": (0.5, 0.5),
    "bleu3": (0.333, 0.333, 0.334),  # as generate.py prints it
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}


def is_script_chinese(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _SCRIPT_RANGES)


def char_split(text: str) -> str:
    """The script's `chinese_char_tokenize`: strip, pad each "Chinese" character with spaces."""
    out = "".join(f" {c} " if is_script_chinese(c) else c for c in text.strip())
    return out or EMPTY_TEXT


def corpus_bleu(
    references: Sequence[Sequence[Sequence[str]]],
    hypotheses: Sequence[Sequence[str]],
    weights: Sequence[tuple[float, ...]],
) -> list[float]:
    """nltk's `corpus_bleu` with a list of weights and no smoothing, one score per weights."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    orders = max(len(w) for w in weights)
    matched = [0] * (orders + 1)
    total = [0] * (orders + 1)
    hyp_length = ref_length = 0
    for refs, hyp in zip(references, hypotheses):
        for n in range(1, orders + 1):
            counts = _ngrams(hyp, n)
            best = Counter()
            for ref in refs:
                ref_counts = _ngrams(ref, n)
                for gram in counts:
                    best[gram] = max(best[gram], ref_counts[gram])
            matched[n] += sum(min(c, best[gram]) for gram, c in counts.items())
            total[n] += max(1, sum(counts.values()))
        hyp_length += len(hyp)
        ref_length += min((len(r) for r in refs), key=lambda r: (abs(r - len(hyp)), r))
    if matched[1] == 0:
        return [0.0] * len(weights)
    if hyp_length > ref_length:
        penalty = 1.0
    elif hyp_length == 0:
        penalty = 0.0
    else:
        penalty = math.exp(1 - ref_length / hyp_length)
    precisions = [
        matched[n] / total[n] if matched[n] else sys.float_info.min for n in range(1, orders + 1)
    ]
    return [
        penalty * math.exp(math.fsum(w * math.log(p) for w, p in zip(weight, precisions)))
        for weight in weights
    ]


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _sentences(text: str) -> list[str]:
    return [" ".join(part.split()) for part in text.split(".") if len(part) > 0]


def _words(sentences: list[str]) -> list[str]:
    return [word for sentence in sentences for word in sentence.split(" ")]


def _f1(precision: float, recall: float) -> float:
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def _rouge_n(hyp: list[str], ref: list[str], n: int) -> float:
    hyp_grams = {tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1)}
    ref_grams = {tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)}
    overlap = len(hyp_grams & ref_grams)
    precision = overlap / len(hyp_grams) if hyp_grams else 0.0
    recall = overlap / len(ref_grams) if ref_grams else 0.0
    return _f1(precision, recall)


def _lcs_words(x: list[str], y: list[str]) -> set[str]:
    """The words of the LCS of x and y that the package's read-back finds (iteratively)."""
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            if x[i - 1] == y[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    words: set[str] = set()
    i, j = len(x), len(y)
    while i and j:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def _rouge_l(hyp_sentences: list[str], ref_sentences: list[str]) -> float:
    union: set[str] = set()
    for ref in ref_sentences:
        for hyp in hyp_sentences:
            union |= _lcs_words(ref.split(" "), hyp.split(" "))
    recall = len(union) / len(set(_words(ref_sentences)))
    precision = len(union) / len(set(_words(hyp_sentences)))
    return _f1(precision, recall)


def rouge_scores(hypotheses: list[str], references: list[str]) -> tuple[dict[str, float], int]:
    """The package's `Rouge().get_scores(hyps, refs, avg=True)` F of rouge-1/2/l, and how
    many pairs it would have refused (scored 0 here)."""
    totals = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    refused = 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp, ref = _sentences(hypothesis), _sentences(reference)
        if not hyp or not ref:
            refused += 1
            continue
        hyp_words, ref_words = _words(hyp), _words(ref)
        totals["rouge-1"] += _rouge_n(hyp_words, ref_words, 1)
        totals["rouge-2"] += _rouge_n(hyp_words, ref_words, 2)
        totals["rouge-l"] += _rouge_l(hyp, ref)
    count = len(hypotheses)
    return {name: total / count for name, total in totals.items()}, refused


def paper_scores(outputs: list[str], references: list[str]) -> tuple[dict[str, float], int]:
    """BLEU-1/2/3/4 and ROUGE-1/2/L F as the script computes them, in %, and the number of
    pairs the rouge package would have refused."""
    if not outputs or len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} references")
    hyps = [char_split(text) for text in outputs]
    refs = [char_split(text) for text in references]
    bleu = corpus_bleu(
        [[list(r)] for r in refs], [list(h) for h in hyps], list(BLEU_WEIGHTS.values())
    )
    rouge, refused = rouge_scores(hyps, refs)
    metrics = {name: 100.0 * value for name, value in zip(BLEU_WEIGHTS, bleu)}
    metrics.update(
        rouge1=100.0 * rouge["rouge-1"],
        rouge2=100.0 * rouge["rouge-2"],
        rougeL=100.0 * rouge["rouge-l"],
    )
    return metrics, refused
