"""The static engine: batched decoding on the megatron GPTModel (any TP), with megatron-core's
static KV cache. `generation.engine: static` and the CPU fallback; the dynamic engine
(dynamic.py) is the default.

Prompts of different lengths share a batch the way megatron-core's static
`TextGenerationController` does it, without padding tokens: the first forward pass runs every
row up to the shortest prompt, then one position per step; a row whose prompt is longer keeps
its own prompt token at that position (teacher forcing) and starts generating once past it.
Every row therefore sees exactly its own tokens at their true positions, so a row's greedy
answer does not depend on its neighbours. Sorting rows by length keeps the teacher-forced
stretch short.

Every rank of a TP group must call these functions with the same prompts and config.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from tqdm import tqdm

from megatron_chimed.config.stages import GenerationConfig
from megatron_chimed.generation.sampling import next_tokens, row_keys, true_vocab
from megatron_chimed.model import unwrap


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def whole_embedding(model: torch.nn.Module) -> torch.Tensor | None:
    """The input embedding table with every vocabulary row, on each TP rank (None at TP=1 or
    under sequence parallelism, where megatron's own embedding is used).

    Megatron splits the table by vocabulary, so each forward embeds its tokens with an
    all-reduce. A decode step is a few latency-bound collectives around little compute (one
    token per row), so embedding locally removes one of them per step, for vocab x hidden more
    memory per rank (0.4 GB at 13B in bf16), gathered once per `generate_ids` call.
    """
    from megatron.core import parallel_state

    core = unwrap(model)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1 or core.config.sequence_parallel:
        return None
    shard = core.embedding.word_embeddings.weight.detach()
    table = shard.new_empty((shard.size(0) * tp, shard.size(1)))
    group = parallel_state.get_tensor_model_parallel_group()
    # all_gather_into_tensor: in every torch >= 2.0 (setup.py allows >= 2.6).
    dist.all_gather_into_tensor(table, shard.contiguous(), group=group)
    return table


def _last_logits(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    context: StaticInferenceContext | None,  # noqa: F821 (imported lazily: megatron is slow)
    vocab_size: int,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 logits of the last position over the tokenizer's (gathered) vocabulary.
    With `table` (see `whole_embedding`) the tokens are embedded here, without a collective."""
    extra = {}
    if table is not None:  # megatron's decoder runs sequence-first: [seq, batch, hidden]
        extra["decoder_input"] = table[tokens].transpose(0, 1).contiguous()
    logits = model(
        tokens, positions, None, inference_context=context, runtime_gather_output=True, **extra
    )
    if context is not None:
        context.increment_sequence_len_offset(tokens.size(1))
    return true_vocab(logits[:, -1, :], vocab_size)


def _agree_across_tp(tokens: torch.Tensor, greedy: bool) -> torch.Tensor:
    """Take TP rank 0's tokens on every rank of the group when sampling. The ranks sample
    identical gathered logits with identically seeded generators, so this changes nothing
    unless a kernel differs in the last bit; then it keeps the ranks' KV caches from silently
    diverging. Greedy needs no broadcast: the gathered logits are the same bytes on every rank
    (an all-gather copies, it does not add), and argmax of the same bytes is the same id."""
    from megatron.core import parallel_state

    if not greedy and parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.broadcast(
            tokens,
            parallel_state.get_tensor_model_parallel_src_rank(),
            group=parallel_state.get_tensor_model_parallel_group(),
        )
    return tokens


@torch.no_grad()
def decode_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    cfg: GenerationConfig,
    vocab_size: int,
    stop_ids: list[int],
    keys: torch.Tensor,
    limits: list[int],
    table: torch.Tensor | None = None,
) -> list[list[int]]:
    """New token ids for each prompt: up to its limit (`limits`, at most `cfg.max_new_tokens`),
    cut before the first stop id. `keys`: each row's sampling key (sampling.row_keys);
    `table`: the whole embedding from `whole_embedding`, or None for megatron's own."""
    from megatron.core.inference.contexts import StaticInferenceContext
    from megatron.core.inference.utils import InferenceMode

    device = _device(model)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    if int(lengths.min()) == 0:
        raise ValueError("generation: a prompt encodes to no tokens")
    total = int(lengths.max()) + cfg.max_new_tokens
    limit = unwrap(model).max_sequence_length
    if total > limit:
        raise ValueError(
            f"generation: a prompt of {int(lengths.max())} tokens + max_new_tokens="
            f"{cfg.max_new_tokens} exceeds the model's max_position_embeddings={limit}"
        )
    tokens = torch.zeros((len(prompts), total), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
    positions = torch.arange(total, device=device).expand(len(prompts), total)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    keys = keys.to(device)
    limit_of = torch.tensor(limits, dtype=torch.long, device=device)
    context = StaticInferenceContext(len(prompts), total) if cfg.use_kv_cache else None

    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new_count = torch.zeros_like(lengths)
    stopped = torch.zeros_like(done)
    start, end = 0, int(lengths.min())
    model.eval()
    # megatron keeps only the last position's logits (and so never builds [batch, seq, vocab]
    # during prefill) only while this process-wide flag is set, as its own engines do.
    with InferenceMode.active():
        while True:
            # Without the cache every step recomputes the whole sequence from position 0.
            window = slice(start if context is not None else 0, end)
            logits = _last_logits(
                model, tokens[:, window], positions[:, window], context, vocab_size, table
            )
            at = torch.full_like(lengths, end)  # the position the new token takes
            sampled = _agree_across_tp(next_tokens(logits, cfg, keys, at), cfg.greedy)
            generating = (lengths <= end) & ~done
            tokens[:, end] = torch.where(generating, sampled, tokens[:, end])
            new_count += generating.long()
            hit_stop = generating & torch.isin(sampled, stops)
            stopped |= hit_stop
            done |= hit_stop | (generating & (new_count >= limit_of))
            if bool(done.all()) or end + 1 == total:
                break
            if context is not None and bool((lengths <= end).all()):
                context.enable_decode_mode()  # every prompt is consumed: pure decode from here
            start, end = end, end + 1

    out = []
    for row, length in enumerate(lengths.tolist()):
        n = int(new_count[row]) - int(stopped[row])  # the stop token is not part of the answer
        out.append(tokens[row, length : length + n].tolist())
    return out


def check_limits(limits: list[int] | None, rows: int, max_new_tokens: int) -> list[int]:
    """Each row's cap on new tokens: `limits` checked (one per row, 1..max_new_tokens), or
    max_new_tokens for every row."""
    if limits is None:
        return [max_new_tokens] * rows
    if len(limits) != rows or not all(1 <= n <= max_new_tokens for n in limits):
        raise ValueError(
            f"generation: limits needs {rows} values in 1..max_new_tokens={max_new_tokens}"
        )
    return list(limits)


def generate_ids(
    model: torch.nn.Module,
    prompts: list[list[int]],
    cfg: GenerationConfig,
    vocab_size: int,
    stop_ids: list[int],
    progress: bool = False,
    limits: list[int] | None = None,
) -> list[list[int]]:
    """New token ids for every prompt row, in input order, decoded `cfg.batch_size` at a time
    with megatron-core's static KV cache (the static engine). `limits`: each row's own cap on
    new tokens (at most `cfg.max_new_tokens`; default that).

    Row i is sampled with key (cfg.seed, i) (sampling.py), so a row's answer depends on the
    seed, its index and its prompt only: not on batch_size, TP, or the other rows.
    """
    cfg.validate()
    limits = check_limits(limits, len(prompts), cfg.max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    device = _device(model)
    keys = row_keys(cfg.seed, torch.arange(len(prompts), device=device))
    table = whole_embedding(model)
    out: list[list[int]] = [[] for _ in prompts]
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    for rows in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        answers = decode_batch(
            model,
            [prompts[i] for i in rows],
            cfg,
            vocab_size,
            stop_ids,
            keys[rows],
            [limits[i] for i in rows],
            table,
        )
        for i, answer in zip(rows, answers):
            out[i] = answer
    return out


@torch.no_grad()
def next_token_logprobs(
    model: torch.nn.Module, prompts: list[list[int]], vocab_size: int, batch_size: int = 8
) -> torch.Tensor:
    """log P(next token | prompt) over the true vocabulary, [len(prompts), vocab_size].

    Rows are batched only with rows of the same length, so no padding or masking is needed."""
    from megatron.core.inference.contexts import StaticInferenceContext
    from megatron.core.inference.utils import InferenceMode

    device = _device(model)
    out = torch.empty((len(prompts), vocab_size), dtype=torch.float32)
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    model.eval()
    with InferenceMode.active():
        for length, group in sorted(by_length.items()):
            for k in range(0, len(group), batch_size):
                rows = group[k : k + batch_size]
                tokens = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
                positions = torch.arange(length, device=device).expand(len(rows), length)
                context = StaticInferenceContext(len(rows), length)
                logits = _last_logits(model, tokens, positions, context, vocab_size)
                out[rows] = torch.log_softmax(logits[:, :vocab_size], dim=-1).cpu()
    return out
