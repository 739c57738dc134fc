"""The one chat template of ChiMed-GPT: SFT, the reward model, rejection sampling and generation.

A dialogue is a list of messages `{"role": "user" | "assistant", "content": str}`, alternating
and starting with the user. The Ziya template (Fengshenbang `finetune_ziya_llama.py`, see
docs/data_formats.md §template) renders it as

    <s><human>:{user 1}\n<bot>:{assistant 1}</s><human>:{user 2}\n<bot>:{assistant 2}</s>

with `<human>` / `<bot>` the added tokens and no separator between turns. `ziya_brackets` is
the plain-text `[human]:` / `[bot]:` variant of the ChiMed-GPT README. Each prompt
(`<human>:...\n<bot>:`) and each response are tokenized separately, as Fengshenbang does, so the
prompt/response boundary is a token boundary and the loss mask is exact; the response therefore
starts with sentencepiece's dummy-prefix piece, which is also what the model emits after `<bot>:`.
The leading `<s>` matches HF inference (`add_bos_token: true`) and marks sample starts in packing.
`ziya` needs a tokenizer with `<human>` / `<bot>` tokens; `hf` renders with the tokenizer's own
jinja `chat_template` instead (data/hf_template.py), for models that are not Ziya.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_chimed.data import hf_template
from megatron_chimed.tokenizer import Tokenizer

#: The paper's SFT instruction (Table 3), put before the first user message with a blank line.
DOCTOR_INSTRUCTION = "假设你是一名医生，请回答患者的问题。"

USER, ASSISTANT = "user", "assistant"


@dataclass(frozen=True)
class Turn:
    """One exchange in token ids: `prompt` ends with the bot marker (the generation prompt),
    `response` with `</s>` (the end-of-turn token)."""

    prompt: list[int]
    response: list[int]


class ChatTemplate:
    """How a dialogue is written out; pick one with `get_template(name)`. A template says how
    each exchange becomes ids (`encode_turns`) and when generation stops; the rest is shared."""

    name: str

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text that ends a generated response when the model skips its stop token."""
        return ()

    def stop_token_ids(self, tokenizer: Tokenizer) -> list[int]:
        raise NotImplementedError

    def encode_turns(
        self, tokenizer: Tokenizer, messages: list[dict], instruction: str | None = None
    ) -> list[Turn]:
        """Token ids per exchange, without `<s>`. A trailing user message becomes a turn with
        an empty response (the generation prompt)."""
        raise NotImplementedError

    def encode_dialogue(
        self,
        tokenizer: Tokenizer,
        messages: list[dict],
        instruction: str | None = None,
        train_history: bool = True,
    ) -> tuple[list[int], list[int]]:
        """`(token_ids, loss_mask)` of a dialogue that ends with an assistant message.

        `loss_mask[i] = 1` when token i is a training target (predicted from tokens < i): every
        response token and its `</s>`, never a prompt token or `<s>`. With
        `train_history=False` only the last response is trained (the earlier ones are context,
        as in the paper's "history + latest utterance -> doctor reply" samples).
        """
        check_messages(messages)
        if not messages or messages[-1]["role"] != ASSISTANT:
            raise ValueError("encode_dialogue: the dialogue must end with an assistant message")
        turns = self.encode_turns(tokenizer, messages, instruction)
        return join_turns(tokenizer, turns, train_history)

    def encode_prompt(
        self, tokenizer: Tokenizer, messages: list[dict], instruction: str | None = None
    ) -> list[int]:
        """Ids for generation: `<s>` + the dialogue so far + the last user message + bot marker."""
        check_messages(messages)
        if not messages or messages[-1]["role"] != USER:
            raise ValueError("encode_prompt: the dialogue must end with a user message")
        ids = [tokenizer.bos]
        for turn in self.encode_turns(tokenizer, messages, instruction):
            ids += turn.prompt + turn.response
        return ids


@dataclass(frozen=True)
class TagTemplate(ChatTemplate):
    """`{human}:{user}\\n{bot}:{assistant}</s>`; with `tags_are_tokens` the tags must be single
    added tokens of the tokenizer (Ziya's `<human>` / `<bot>`), not text."""

    name: str
    human: str  # speaker tag of the user; `{human}:` starts every user turn
    bot: str  # speaker tag of the model; `\n{bot}:` ends every prompt
    tags_are_tokens: bool = False

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Without `<human>` / `<bot>` tokens the tags would be split into text pieces, and a
        model trained on that would not be Ziya's format: refuse rather than train on it."""
        if self.tags_are_tokens and None in map(tokenizer.token_to_id, (self.human, self.bot)):
            raise ValueError(
                f"chat template {self.name!r}: the tokenizer in {tokenizer.directory} has no "
                f"{self.human} / {self.bot} tokens; use template 'hf' or 'ziya_brackets'"
            )

    def prompt_text(self, user: str) -> str:
        return f"{self.human}:{user.strip()}\n{self.bot}:"

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text that ends a generated response when the model skips `</s>`: the next turn."""
        return (f"{self.human}:",)

    def stop_token_ids(self, tokenizer: Tokenizer) -> list[int]:
        """`</s>`, plus the user tag when it is one (added) token, as `<human>` is. No check
        here: raw-text prompts (evaluation) stop at `</s>` with any tokenizer."""
        tag = tokenizer.encode(self.human)
        return [tokenizer.eos, *tag] if len(tag) == 1 else [tokenizer.eos]

    def encode_turns(
        self, tokenizer: Tokenizer, messages: list[dict], instruction: str | None = None
    ) -> list[Turn]:
        check_messages(messages)
        self.check_tokenizer(tokenizer)
        turns = []
        for i in range(0, len(messages), 2):
            user = messages[i]["content"].strip()
            if i == 0 and instruction:
                user = f"{instruction}\n\n{user}"
            prompt = tokenizer.encode(self.prompt_text(user))
            if i + 1 < len(messages):
                response = tokenizer.encode(messages[i + 1]["content"].strip(), eos=True)
            else:
                response = []
            turns.append(Turn(prompt, response))
        return turns


def join_turns(
    tokenizer: Tokenizer, turns: list[Turn], train_history: bool = True
) -> tuple[list[int], list[int]]:
    """Concatenate encoded turns after `<s>`; the loss mask marks the trained responses."""
    ids, mask = [tokenizer.bos], [0]
    for k, turn in enumerate(turns):
        trained = train_history or k == len(turns) - 1
        ids += turn.prompt + turn.response
        mask += [0] * len(turn.prompt) + [int(trained)] * len(turn.response)
    return ids, mask


def check_messages(messages: list[dict]) -> None:
    """Roles must alternate user, assistant, user, ... (readers merge same-speaker runs)."""
    for i, message in enumerate(messages):
        expected = USER if i % 2 == 0 else ASSISTANT
        if message.get("role") != expected:
            raise ValueError(f"message {i}: role {message.get('role')!r}, expected {expected!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {i}: content must be a string")


class HFTemplate(ChatTemplate):
    """The tokenizer's own jinja `chat_template`, split into exchanges by data/hf_template.py so
    that only the assistant's text and its end-of-turn token are trained."""

    name = "hf"

    def stop_token_ids(self, tokenizer: Tokenizer) -> list[int]:
        return hf_template.stop_token_ids(tokenizer)

    def encode_turns(
        self, tokenizer: Tokenizer, messages: list[dict], instruction: str | None = None
    ) -> list[Turn]:
        check_messages(messages)
        rendered = [dict(m, content=m["content"].strip()) for m in messages]
        if rendered and instruction:
            rendered[0]["content"] = f"{instruction}\n\n{rendered[0]['content']}"
        return [
            Turn(tokenizer.encode(prompt), tokenizer.encode(response) if response else [])
            for prompt, response in hf_template.split_exchanges(tokenizer, rendered)
        ]


TEMPLATES: dict[str, ChatTemplate] = {
    "ziya": TagTemplate("ziya", human="<human>", bot="<bot>", tags_are_tokens=True),
    "ziya_brackets": TagTemplate("ziya_brackets", human="[human]", bot="[bot]"),
    "hf": HFTemplate(),
}


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"chat template {name!r}: expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]
