"""BLEU-1/2/4 and ROUGE-1/2/L for Chinese text, computed by sacrebleu and rouge-score.

Both metrics see the same tokens: sacrebleu's ``zh`` tokenizer, which makes every CJK character
a token and splits the rest with the 13a rules (so "CT" stays one token). rouge-score's own
tokenizer would delete every Chinese character (it keeps only [a-z0-9]), hence the custom one.
All scores are percentages, as in the paper's Tables 5 and 8 (which give BLEU-1/2; BLEU-4 is
what most other QA work reports, so it is there to compare against them).
"""

from __future__ import annotations

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

TOKENISATION = "sacrebleu zh: one token per CJK character, 13a rules for other text"
_ZH = TokenizerZh()
BLEU_ORDERS = (1, 2, 4)


def tokenize_zh(text: str) -> list[str]:
    return _ZH(text.strip()).split()


class _ZhTokenizer:
    """The object rouge-score calls: it only needs ``tokenize(text) -> list[str]``."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize_zh(text)


def bleu_scores(hypotheses: list[str], references: list[str], level: str = "corpus") -> dict:
    """BLEU-n = brevity penalty x geometric mean of 1..n-gram precisions (uniform weights).

    ``corpus``: sacrebleu's corpus BLEU (counts pooled over the test set, the standard);
    ``sentence``: the mean of sacrebleu's sentence BLEU (exp smoothing) over the pairs.
    """
    _check_pairs(hypotheses, references)
    scores: dict[str, float] = {}
    for order in BLEU_ORDERS:
        if level == "corpus":
            bleu = BLEU(tokenize="zh", max_ngram_order=order)
            scores[f"bleu{order}"] = bleu.corpus_score(hypotheses, [references]).score
        elif level == "sentence":
            bleu = BLEU(tokenize="zh", max_ngram_order=order, effective_order=True)
            per_pair = [bleu.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]
            scores[f"bleu{order}"] = sum(per_pair) / len(per_pair)
        else:
            raise ValueError(f"bleu level must be corpus or sentence, not {level!r}")
    return scores


def rouge_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Mean F1 of ROUGE-1, ROUGE-2 and ROUGE-L (summary-free LCS) over the pairs, in %."""
    _check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_ZhTokenizer())
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hypothesis, reference in zip(hypotheses, references):
        # rouge-score's argument order is (target, prediction).
        for name, score in scorer.score(reference, hypothesis).items():
            totals[name] += score.fmeasure
    return {name: 100.0 * total / len(hypotheses) for name, total in totals.items()}


def text_scores(hypotheses: list[str], references: list[str], bleu_level: str = "corpus") -> dict:
    bleu = bleu_scores(hypotheses, references, bleu_level)
    return {**bleu, **rouge_scores(hypotheses, references)}


def _check_pairs(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("no hypothesis/reference pairs to score")
