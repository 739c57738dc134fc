"""log P(continuation | context) the way lm-evaluation-harness computes it, for any model.

lm-eval (`TemplateLM._encode_pair`, 0.4.x) moves trailing whitespace of the context onto the
continuation, encodes context and context+continuation with the tokenizer's defaults (BOS
first for LLaMA tokenizers) and takes the continuation's tokens as the tail of the whole
encoding past the context's length; the score is the sum of the log-softmax of the logits
at those positions. With a SentencePiece tokenizer " A" after "答案：" becomes "▁", "A": two
tokens, both scored. `split_pair` is that rule; the HF adapter (model_api.HFEvalModel) and
the Megatron one (megatron_model.py) apply it, so both score the tokens lm-eval scores.

lm-eval takes the log-softmax in the model's dtype (bf16 for a bf16 model) unless given
`softmax_dtype=float32`; both adapters take it in fp32, i.e. they equal lm-eval run with
`softmax_dtype=float32` (or an fp32 model, as in tests/eval/fixtures/lm_eval).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

Request = tuple[str, str]  # (context, continuation)


@runtime_checkable
class LoglikelihoodModel(Protocol):
    def loglikelihood(self, requests: list[Request]) -> list[float]:
        """Summed log-probability of each continuation's tokens after its context."""
        ...


def require_loglikelihood(model: Any, who: str) -> LoglikelihoodModel:
    if not isinstance(model, LoglikelihoodModel):
        raise TypeError(
            f"{who} needs a model that scores continuations (loglikelihood): HFEvalModel or "
            f"MegatronLoglikelihood, not {type(model).__name__}"
        )
    return model


def split_pair(
    encode: Callable[[str], list[int]], context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's `_encode_pair` makes them for a causal LM;
    `encode` adds what the tokenizer adds by default (BOS for LLaMA)."""
    if not context:
        raise ValueError("an empty context has no lm-eval encoding here; give a prompt")
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids) :]


def summed_logprob(logprobs: Any, tokens: list[int]) -> float:
    """Sum of log P(tokens[k]) where row k of `logprobs` [len(tokens), vocab] is the
    log-softmaxed output that predicts tokens[k]."""
    if not tokens:
        raise ValueError("the continuation encodes to no tokens past the context")
    return sum(float(logprobs[k, token]) for k, token in enumerate(tokens))
