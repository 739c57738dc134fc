"""The two calls every evaluation task makes on a model, and an adapter for Hugging Face models.

Tasks only see :class:`EvalModel`, so the same task code runs on an HF export (adapter below),
on the Megatron model (adapter from the generation work) or on a fake model in the tests.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from megatron_chimed.config.stages import GenerationConfig

from .loglikelihood import Request, require_loglikelihood, split_pair, summed_logprob


@runtime_checkable
class EvalModel(Protocol):
    def generate(self, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
        """The continuation of each prompt (prompt text not included)."""
        ...

    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[list[float]]:
        """log P(first token of candidate | prompt) for every prompt x candidate."""
        ...


def candidate_token_id(encode: Callable[[str], list[int]], prompt: str, candidate: str) -> int:
    """The token a model emits first when writing ``candidate`` right after ``prompt``.

    ``encode`` tokenizes without special tokens. Encoding the candidate alone is wrong for
    SentencePiece tokenizers ("A" alone becomes "▁A", but "答案：A" ends in "A"), so we encode
    prompt+candidate and take the token after the prompt's tokens, falling back to the lone
    encoding if the boundary merged.
    """
    prompt_ids = encode(prompt)
    full_ids = encode(prompt + candidate)
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        return full_ids[len(prompt_ids)]
    alone = encode(candidate)
    if not alone:
        raise ValueError(f"candidate {candidate!r} encodes to no tokens")
    return alone[0]


def with_sampling(model: Any, temperature: float | None, top_p: float | None) -> Any:
    """`model` generating with this temperature / top-p (None keeps the model's own).

    A wrapper or adapter answers through its own `with_sampling`; the Megatron `EvalModel`
    (generation/eval_model.py) keeps its decoding in `cfg`, a GenerationConfig, copied here.
    """
    if temperature is None and top_p is None:
        return model
    if hasattr(model, "with_sampling"):
        return model.with_sampling(temperature, top_p)
    cfg = getattr(model, "cfg", None)
    if isinstance(cfg, GenerationConfig):
        changes = {"temperature": temperature, "top_p": top_p}
        sampled = copy.copy(model)
        sampled.cfg = dataclasses.replace(
            cfg, **{k: v for k, v in changes.items() if v is not None}
        )
        sampled.cfg.validate()
        return sampled
    raise TypeError(
        f"{type(model).__name__} cannot be told a temperature or top_p (the eval task sets "
        "them); give it a with_sampling(temperature, top_p) method"
    )


class TemplatedModel:
    """Wraps every prompt in a chat template (e.g. Ziya's ``<human>:{prompt}\\n<bot>:``)."""

    def __init__(self, model: EvalModel, template: str) -> None:
        if "{prompt}" not in template:
            raise ValueError(f"eval template {template!r} must contain the placeholder {{prompt}}")
        self.model = model
        self.template = template

    def _wrap(self, prompts: list[str]) -> list[str]:
        # str.replace, not str.format: prompts and templates may contain literal braces.
        return [self.template.replace("{prompt}", p) for p in prompts]

    def generate(self, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
        return self.model.generate(self._wrap(prompts), max_new_tokens, seed)

    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[list[float]]:
        return self.model.next_token_logprobs(self._wrap(prompts), candidates)

    def loglikelihood(self, requests: list[Request]) -> list[float]:
        scorer = require_loglikelihood(self.model, "scoring continuations")
        contexts = self._wrap([context for context, _ in requests])
        return scorer.loglikelihood([(c, x) for c, (_, x) in zip(contexts, requests)])

    def with_sampling(self, temperature: float | None, top_p: float | None) -> TemplatedModel:
        return TemplatedModel(with_sampling(self.model, temperature, top_p), self.template)


class HFEvalModel:
    """EvalModel over a ``transformers`` causal LM and its tokenizer (CPU or one GPU).

    Prompts are left-padded into batches so that the last position of every row is the
    position that predicts the next token.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 8,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.temperature = temperature
        self.top_p = top_p
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError("tokenizer has neither a pad nor an eos token id to pad batches with")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _batches(self, items: list[Any]) -> list[list[Any]]:
        return [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]

    def candidate_token_id(self, prompt: str, candidate: str) -> int:
        return candidate_token_id(self._encode_plain, prompt, candidate)

    def _encode_plain(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @torch.no_grad()
    def next_token_logprobs(self, prompts: list[str], candidates: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for batch in self._batches(prompts):
            ids, mask = self._left_pad([self._encode(p) for p in batch])
            # Left padding shifts positions; give LLaMA the positions of the unpadded text.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            logprobs = torch.log_softmax(logits[:, -1, :].float(), dim=-1)
            for row, prompt in zip(logprobs, batch):
                cand_ids = [self.candidate_token_id(prompt, c) for c in candidates]
                out.append([float(row[t]) for t in cand_ids])
        return out

    @torch.no_grad()
    def loglikelihood(self, requests: list[Request]) -> list[float]:
        """lm-eval's continuation scores (loglikelihood.py); rows right-padded, which under
        causal attention leaves every real position as it is alone."""
        pairs = [split_pair(self._encode, context, cont) for context, cont in requests]
        out: list[float] = []
        for batch in self._batches(pairs):
            rows = [context + cont for context, cont in batch]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
                mask[i, : len(row)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            for row_logits, (context, cont) in zip(logits.logits, batch):
                at = len(context) - 1  # the position that predicts the first continuation token
                chosen = torch.log_softmax(row_logits[at : at + len(cont)].float(), dim=-1)
                out.append(summed_logprob(chosen.cpu(), cont))
        return out

    def with_sampling(self, temperature: float | None, top_p: float | None) -> HFEvalModel:
        sampled = copy.copy(self)
        sampled.temperature = self.temperature if temperature is None else temperature
        sampled.top_p = self.top_p if top_p is None else top_p
        return sampled

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
        torch.manual_seed(seed)
        sample = self.temperature > 0
        options: dict[str, Any] = {"do_sample": sample}
        if sample:
            options.update(temperature=self.temperature, top_p=self.top_p)
        out: list[str] = []
        for batch in self._batches(prompts):
            ids, mask = self._left_pad([self._encode(p) for p in batch])
            generated = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.pad_id,
                **options,
            )
            for row in generated[:, ids.shape[1] :]:
                out.append(self.tokenizer.decode(row.tolist(), skip_special_tokens=True))
        return out
