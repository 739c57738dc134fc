"""Text in, answers out: the generation API of the RS stage, `chimed generate` and evaluation.

A prompt is either chat messages (`[{"role": "user", "content": ...}, ...]`, ending with a
user message), rendered with the chat template of `megatron_chimed.data.template`, or a raw
string that is already the full model input (tokenized as is, after `<s>`). Generation stops
at `</s>`, at the next `<human>` turn, or after `max_new_tokens`.
"""

from __future__ import annotations

from typing import Any

import torch

from megatron_chimed.config.stages import GenerationConfig
from megatron_chimed.data.template import ChatTemplate, get_template
from megatron_chimed.generation import decode, dynamic
from megatron_chimed.generation.cuda_graphs import disabled as cuda_graphs_disabled
from megatron_chimed.model import unwrap
from megatron_chimed.tokenizer import Tokenizer

Prompt = str | list[dict[str, Any]]


def encode_prompt(tokenizer: Tokenizer, prompt: Prompt, cfg: GenerationConfig) -> list[int]:
    """Token ids the model continues: `<s>` + raw text, or `<s>` + the templated dialogue."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, bos=True)
    return get_template(cfg.template).encode_prompt(tokenizer, prompt, cfg.instruction)


def cut_at_stop_strings(text: str, template: ChatTemplate) -> str:
    """Cut a response where the next turn's tag starts (`[human]:` is plain text, not a stop
    token, in the bracket variant of the template)."""
    for stop in template.stop_strings:
        text = text.split(stop, 1)[0]
    return text


def generate_ids(
    model: torch.nn.Module,
    prompts: list[list[int]],
    cfg: GenerationConfig,
    vocab_size: int,
    stop_ids: list[int],
    progress: bool = False,
    limits: list[int] | None = None,
) -> list[list[int]]:
    """New token ids for every prompt row, in input order, through `cfg.engine`: `dynamic`
    (continuous batching, paged KV: dynamic.py) or `static` (batches of cfg.batch_size:
    decode.py). Both give the same tokens for the same rows, greedy or sampled: row i is
    sampled with key (cfg.seed, i). `limits`: each row's own cap on new tokens."""
    cfg.validate()
    if cfg.engine == "dynamic" and cfg.use_kv_cache:
        return dynamic.generate_ids(model, prompts, cfg, vocab_size, stop_ids, progress, limits)
    with cuda_graphs_disabled(unwrap(model)):
        return decode.generate_ids(model, prompts, cfg, vocab_size, stop_ids, progress, limits)


def generate(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts: list[Prompt],
    cfg: GenerationConfig,
    progress: bool = False,
) -> list[list[str]]:
    """`cfg.num_samples` answers for each prompt: `result[i][j]` is answer j to prompt i.

    Call it on every rank of the TP group with the same arguments (the model is this rank's
    shard); every rank returns the same answers. `progress` shows a tqdm bar (rank 0 only).
    """
    template = get_template(cfg.template)
    encoded = [encode_prompt(tokenizer, p, cfg) for p in prompts]
    rows = [ids for ids in encoded for _ in range(cfg.num_samples)]
    stop_ids = template.stop_token_ids(tokenizer)
    answers = generate_ids(model, rows, cfg, tokenizer.vocab_size, stop_ids, progress)
    texts = [cut_at_stop_strings(tokenizer.decode(ids), template) for ids in answers]
    n = cfg.num_samples
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
