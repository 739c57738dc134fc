"""A reader record -> `(token_ids, loss_mask)` that fits the packing budget, or a drop reason.

Only the record's last response is trained: the earlier turns are the prompt (paper section
2.2: "dialogue history + the patient's latest utterance -> the doctor's reply"), and every doctor
turn is a record of its own. A record that does not fit loses, in this order, whole exchanges
from the left of its history, then the left part of the latest question. A response is never
cut unless `truncate_response` is set; then it also loses its `</s>`, because an answer that
was cut off must not teach the model to stop there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from megatron_chimed.data.template import ASSISTANT, ChatTemplate, Tokenizer, join_turns

# Reasons a record is dropped or changed; counted per source in EncodeStats.
EMPTY_RESPONSE = "dropped_empty_response"
NO_RESPONSE = "dropped_no_response"  # a prompt-only record (qa with columns.response: null)
TOO_LONG = "dropped_too_long"
HISTORY_CUT = "truncated_history"
QUESTION_CUT = "truncated_question"
RESPONSE_CUT = "truncated_response"


@dataclass
class EncodeStats:
    """Per-source counts of records kept, dropped and truncated (logged, stored in the cache)."""

    counts: dict[str, Counter] = field(default_factory=dict)

    def add(self, source: str, event: str, count: int = 1) -> None:
        self.counts.setdefault(source, Counter())[event] += count

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {source: dict(sorted(c.items())) for source, c in sorted(self.counts.items())}


def drop_reason(record: dict) -> str | None:
    """Why a record has nothing to train on, decided from its text alone (no tokenizer), so
    that sampling can skip it before encoding: the encoder drops it for the same reason."""
    last = record["messages"][-1]
    if last["role"] != ASSISTANT:
        return NO_RESPONSE
    if not last["content"].strip():
        return EMPTY_RESPONSE
    return None


@dataclass(frozen=True)
class Encoder:
    """Encodes records for one template, tokenizer and budget (tokens per sample, `<s>`
    included: the packer's `seq_length + 1`)."""

    template: ChatTemplate
    tokenizer: Tokenizer
    budget: int
    truncate_response: bool = False

    def __call__(
        self, record: dict, instruction: str | None, stats: EncodeStats
    ) -> tuple[list[int], list[int]] | None:
        messages, source = record["messages"], record["source"]
        if (reason := drop_reason(record)) is not None:
            stats.add(source, reason)
            return None
        for start in range(0, len(messages) - 1, 2):
            turns = self.template.encode_turns(self.tokenizer, messages[start:], instruction)
            ids, mask = join_turns(self.tokenizer, turns, train_history=False)
            if len(ids) <= self.budget:
                stats.add(source, HISTORY_CUT if start else "kept")
                return ids, mask
        # Only the last exchange is left, and it is too long.
        question = messages[-2]["content"]
        response = turns[-1].response
        room = self.budget - 1 - len(response)  # 1 for `<s>`
        if room >= self.min_prompt_length(instruction):
            event, prompt = QUESTION_CUT, self._cut_question(question, instruction, room)
        elif self.truncate_response:
            prompt = self._cut_question(question, instruction, self.budget // 2)
            response = response[: max(0, self.budget - 1 - len(prompt))]
            if response[-1:] == [self.tokenizer.eos]:
                response = response[:-1]
            event = RESPONSE_CUT if response else TOO_LONG
        else:
            event = TOO_LONG
        stats.add(source, event)
        if event == TOO_LONG:
            return None
        ids = [self.tokenizer.bos, *prompt, *response]
        return ids, [0] * (1 + len(prompt)) + [1] * len(response)

    def min_prompt_length(self, instruction: str | None) -> int:
        """The ids a prompt keeps when its question is cut away entirely: a record whose
        response fits beside them is kept (its question cut if need be), never dropped."""
        return len(self._prompt("", instruction))

    def _prompt(self, question: str, instruction: str | None) -> list[int]:
        message = [{"role": "user", "content": question}]
        return self.template.encode_turns(self.tokenizer, message, instruction)[0].prompt

    def _cut_question(self, question: str, instruction: str | None, room: int) -> list[int]:
        """The prompt with the question's left part removed until it has at most `room` ids.
        Characters are dropped a third of the excess at a time (a character is at most ~3
        byte-fallback tokens), so the cut never overshoots by much and always progresses."""
        while True:
            prompt = self._prompt(question, instruction)
            excess = len(prompt) - room
            if excess <= 0 or not question:
                return prompt
            question = question[max(1, excess // 3) :]
