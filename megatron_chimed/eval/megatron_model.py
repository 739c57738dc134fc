"""`MegatronLoglikelihood`: the Megatron `EvalModel` (generation/eval_model.py) plus the
continuation scoring of protocol lm_eval (loglikelihood.py) on its GPTModel, at any TP."""

from __future__ import annotations

from typing import Any

import torch

from .loglikelihood import Request, split_pair, summed_logprob
from .model_api import with_sampling


class MegatronLoglikelihood:
    """Wraps `inner` (a MegatronEvalModel: generation and next-token scores) and scores
    continuations on `model` (this rank's GPTModel shard) with `tokenizer`.

    Rows are right-padded into batches: under causal attention a padded tail changes nothing
    before it, so no mask is needed; the width is rounded up to the TP size, which sequence
    parallelism requires. Every rank of a TP group must call with the same requests."""

    def __init__(self, inner: Any, model: torch.nn.Module, tokenizer: Any, batch_size: int = 8):
        self.inner, self.model, self.tokenizer, self.batch_size = (
            inner,
            model,
            tokenizer,
            batch_size,
        )

    def generate(self, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
        return self.inner.generate(prompts, max_new_tokens, seed)

    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[list[float]]:
        return self.inner.next_token_logprobs(prompts, candidates)

    def with_sampling(self, temperature: float | None, top_p: float | None) -> Any:
        sampled = with_sampling(self.inner, temperature, top_p)
        return MegatronLoglikelihood(sampled, self.model, self.tokenizer, self.batch_size)

    @torch.no_grad()
    def loglikelihood(self, requests: list[Request]) -> list[float]:
        from megatron.core import parallel_state

        def encode(text: str) -> list[int]:
            return self.tokenizer.encode(text, bos=True)

        pairs = [split_pair(encode, context, cont) for context, cont in requests]
        rows = [context + cont for context, cont in pairs]
        tp = parallel_state.get_tensor_model_parallel_world_size()
        device = next(self.model.parameters()).device
        vocab = self.tokenizer.vocab_size
        out = [0.0] * len(rows)
        # Longest first: a batch's padding is then at most the spread within it.
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        self.model.eval()
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            # A row's last token is only a label.
            width = -(-max(len(rows[i]) - 1 for i in batch) // tp) * tp
            tokens = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                tokens[r, : len(rows[i]) - 1] = torch.tensor(rows[i][:-1])
            tokens = tokens.to(device)
            positions = torch.arange(width, device=device).expand(len(batch), width)
            logits = self.model(tokens, positions, None, runtime_gather_output=True)
            for r, i in enumerate(batch):
                context, cont = pairs[i]
                at = len(context) - 1  # the position that predicts the first continuation token
                chosen = logits[r, at : at + len(cont), :vocab].float()
                out[i] = summed_logprob(torch.log_softmax(chosen, dim=-1).cpu(), cont)
        return out
