"""Ranked records -> model batches: pairing modes, tokenisation, padding.

A batch holds each prompt's responses once (the K forwards of a K-way ranking, not 2 per pair)
and the pairs as index lists into those sequences, so `all` pairing (K(K-1)/2 pairs) costs no
more forwards than `adjacent` (K-1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from megatron_chimed.data.template import ASSISTANT, USER, ChatTemplate
from megatron_chimed.reward.data import (
    ON_DUPLICATE,
    DuplicateResponse,
    RankedRecord,
    check_distinct,
)
from megatron_chimed.tokenizer import Tokenizer

log = logging.getLogger(__name__)

Pair = tuple[int, int]  # (better, worse): indices into one record's responses, best first


def adjacent_pairs(k: int) -> list[Pair]:
    """The paper's pairs: each response against the next one down (K-1 pairs)."""
    return [(i, i + 1) for i in range(k - 1)]


def all_pairs(k: int) -> list[Pair]:
    """Every ordered pair of the ranking (K(K-1)/2 pairs)."""
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def binary_pairs(k: int) -> list[Pair]:
    """Best against worst only: CMD's chosen vs rejected, the baseline of the paper's App. A."""
    return [(0, k - 1)]


PAIRINGS: dict[str, Callable[[int], list[Pair]]] = {
    "adjacent": adjacent_pairs,
    "all": all_pairs,
    "binary": binary_pairs,
}


def make_pairs(mode: str, k: int) -> list[Pair]:
    if mode not in PAIRINGS:
        raise ValueError(f"pairing={mode!r}: expected one of {sorted(PAIRINGS)}")
    return PAIRINGS[mode](k)


def encode_response(
    template: ChatTemplate,
    tokenizer: Tokenizer,
    record: RankedRecord,
    rank: int,
    seq_length: int,
    instruction: str | None = None,
) -> tuple[tuple[int, ...], bool]:
    """`<s>` + prompt + response + `</s>` in the shared chat template, and whether it was cut.

    A too-long sequence keeps `<s>` and its end: the score is read at the last token (`</s>`),
    so the start of the prompt is what gives way.
    """
    messages = [
        {"role": USER, "content": record.prompt},
        {"role": ASSISTANT, "content": record.responses[rank]},
    ]
    ids, _ = template.encode_dialogue(tokenizer, messages, instruction)
    if len(ids) <= seq_length:
        return tuple(ids), False
    return (ids[0], *ids[len(ids) - seq_length + 1 :]), True


@dataclass(frozen=True)
class RankedExample:
    """One prompt's responses that some pair uses, best first, and its pairs into them."""

    sequences: tuple[tuple[int, ...], ...]
    pairs: tuple[Pair, ...]


def make_example(
    record: RankedRecord,
    template: ChatTemplate,
    tokenizer: Tokenizer,
    seq_length: int,
    pairing: str,
    instruction: str | None = None,
) -> tuple[RankedExample, bool]:
    """Tokenise the responses `pairing` needs; also report whether any was truncated.

    A record with fewer than 2 responses is a ValueError; one with the same response twice, or
    whose paired responses become the same tokens (cut to `seq_length` from the left, or equal
    after the tokenizer's normalisation), is a DuplicateResponse naming record and field.
    """
    if len(record.responses) < 2:
        where = record.where or "reward record"
        raise ValueError(f"{where}: {len(record.responses)} response(s); a ranking needs >= 2")
    check_distinct(record)  # records built by hand have not been through the reader's check
    pairs = make_pairs(pairing, len(record.responses))
    used = sorted({i for pair in pairs for i in pair})  # binary skips the middle responses
    position = {old: new for new, old in enumerate(used)}
    encoded = [
        encode_response(template, tokenizer, record, i, seq_length, instruction) for i in used
    ]
    for better, worse in pairs:
        if encoded[position[better]][0] == encoded[position[worse]][0]:
            raise DuplicateResponse(
                record.where or "reward record",
                record.name(worse),
                f"the same tokens as {record.name(better)!r} at seq_length={seq_length}: "
                "a pair of equals teaches nothing",
            )
    local = tuple((position[a], position[b]) for a, b in pairs)
    example = RankedExample(tuple(ids for ids, _ in encoded), local)
    return example, any(cut for _, cut in encoded)


def encode_records(
    records: Sequence[RankedRecord],
    template: ChatTemplate,
    tokenizer: Tokenizer,
    seq_length: int,
    pairing: str,
    instruction: str | None = None,
    name: str = "reward",
    on_duplicate: str = "error",
) -> list[RankedExample]:
    """Tokenise every record once up front (reward sets are thousands of records, not
    millions), so truncation is counted and logged before training starts. A record whose
    paired responses are the same tokens is an error (`on_duplicate: error`) or dropped and
    counted (`skip`), the data config's `on_duplicate`."""
    if on_duplicate not in ON_DUPLICATE:
        raise ValueError(f"on_duplicate={on_duplicate!r}: expected one of {ON_DUPLICATE}")
    built, duplicates = [], 0
    for record in records:
        try:
            built.append(
                make_example(record, template, tokenizer, seq_length, pairing, instruction)
            )
        except DuplicateResponse:
            if on_duplicate == "error":
                raise
            duplicates += 1
    if duplicates:
        log.warning(
            "%s: dropped %d record(s) whose paired responses are the same tokens",
            name,
            duplicates,
        )
    if records and not built:
        raise ValueError(f"{name}: every record was dropped; no pair left to train on")
    truncated = sum(cut for _, cut in built)
    if truncated:
        log.warning(
            "%s: %d of %d record(s) longer than seq_length=%d: prompts cut from the left",
            name,
            truncated,
            len(built),
            seq_length,
        )
    return [example for example, _ in built]


def example_tensors(example: RankedExample, seq_length: int, pad_id: int) -> dict:
    """One prompt as fixed-shape tensors (right-padded to `seq_length`), so that the shared
    loop's default collation stacks a micro-batch of prompts with the same K."""
    tokens = torch.full((len(example.sequences), seq_length), pad_id, dtype=torch.long)
    for row, ids in enumerate(example.sequences):
        tokens[row, : len(ids)] = torch.tensor(ids)
    return {
        "tokens": tokens,
        "lengths": torch.tensor([len(ids) for ids in example.sequences]),
        "pairs": torch.tensor(example.pairs, dtype=torch.long).reshape(-1, 2),
    }


@dataclass
class RewardBatch:
    """N = B x K sequences: the responses of B prompts, prompt by prompt, best first."""

    tokens: torch.Tensor  # [N, S] int64, right-padded
    position_ids: torch.Tensor  # [N, S] int64
    last_index: torch.Tensor  # [N] position of each sequence's last real token
    pairs: torch.Tensor  # [P, 2] (better, worse) rows into the N sequences
    group_sizes: list[int]  # responses per prompt (K each); they sum to N


def stack_batch(
    micro_batch: dict, device: torch.device | str = "cpu", multiple: int = 1
) -> RewardBatch:
    """A collated micro-batch (tokens [B, K, S], lengths [B, K], pairs [B, P, 2]) as one batch
    of B x K sequences, cut to its longest sequence rounded up to `multiple` (sequence
    parallelism splits the sequence over the TP ranks: see `sequence_multiple`). Right padding
    needs no attention mask: causal attention never lets a real token see the pads that follow
    it."""
    tokens, lengths, pairs = micro_batch["tokens"], micro_batch["lengths"], micro_batch["pairs"]
    prompts, k, seq_length = tokens.shape
    width = min(-(-int(lengths.max()) // multiple) * multiple, seq_length)
    offsets = torch.arange(prompts).mul(k).view(prompts, 1, 1)
    return RewardBatch(
        tokens=tokens[:, :, :width].reshape(prompts * k, width).to(device),
        position_ids=torch.arange(width).expand(prompts * k, width).to(device),
        last_index=(lengths.reshape(-1) - 1).to(device),
        pairs=(pairs + offsets).reshape(-1, 2).to(device),
        group_sizes=[k] * prompts,
    )


def collate(
    examples: Sequence[RankedExample],
    seq_length: int,
    pad_id: int,
    device: torch.device | str = "cpu",
    multiple: int = 1,
) -> RewardBatch:
    """Examples (each with the same K) straight to a batch, as the loop's loader would."""
    items = [example_tensors(example, seq_length, pad_id) for example in examples]
    return stack_batch(torch.utils.data.default_collate(items), device, multiple)


def sequence_multiple(model: torch.nn.Module) -> int:
    """What a batch's sequence length must be a multiple of for `model`: its TP size under
    sequence parallelism (megatron splits the sequence evenly over the TP ranks), else 1."""
    from megatron_chimed.model import unwrap

    config = unwrap(model).config
    return config.tensor_model_parallel_size if config.sequence_parallel else 1


def length_batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Indices into `lengths` grouped for scoring: sorted by length (longest first, so the
    first batch shows at once whether the budget fits), each batch at most `max_rows`
    sequences and at most `max_tokens` once padded to its longest (rows x longest). A sequence
    longer than the budget goes alone. Similar lengths share a batch, so little is padding."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        # Longest first: the batch's first sequence is its longest.
        if batch and len(batch) < max_rows and (len(batch) + 1) * lengths[batch[0]] <= max_tokens:
            batch.append(i)
        else:
            batches.append([i])
    return batches
