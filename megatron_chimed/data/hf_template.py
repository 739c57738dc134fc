"""The `hf` chat template: a dialogue rendered with the tokenizer's own jinja `chat_template`,
exactly as transformers' `apply_chat_template` renders it, then cut into exchanges.

Training needs to know which tokens are the assistant's. The rendering is one string, so the
exchanges are found by rendering growing prefixes of the dialogue: the prompt of assistant
message j ends where `messages[:j]` with the generation prompt ends, its response ends where
`messages[:j+1]` ends. Each piece must be a prefix of the whole rendering; a template that
renders a turn differently once later turns follow (a running count, reasoning dropped from
old turns) has no such cut, and is refused rather than given a wrong loss mask. The response
is trained up to and including its end-of-turn token (the first special token after the
assistant's text, e.g. `<|im_end|>` or `</s>`); whatever the template writes after that token
(a newline) belongs to the next prompt. Each piece is then tokenized on its own, as the `ziya`
template does, so the prompt/response boundary is a token boundary.
"""

from __future__ import annotations

from typing import Any

from megatron_chimed.tokenizer import Tokenizer

Exchange = tuple[str, str]  # (prompt text, response text ending with its end-of-turn token)
_PROBE = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]


def chat_template_of(tokenizer: Tokenizer) -> str:
    if tokenizer.chat_template is None:
        raise ValueError(
            f"chat template 'hf': {tokenizer.directory} has no chat_template "
            "(chat_template.jinja or tokenizer_config.json)"
        )
    return tokenizer.chat_template


def render(tokenizer: Tokenizer, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    """The text `apply_chat_template(messages, tokenize=False)` gives, with the tokenizer's
    special tokens (`bos_token`, ...) as template variables, as transformers passes them."""
    # transformers' own renderer (sandboxed jinja, its filters and globals), not a copy of it.
    from transformers.utils.chat_template_utils import render_jinja_template

    template = chat_template_of(tokenizer)
    try:
        rendered, _ = render_jinja_template(
            [messages],
            chat_template=template,
            add_generation_prompt=generation_prompt,
            **tokenizer.special_tokens,
        )
    except Exception as err:  # jinja errors and the template's own raise_exception()
        raise ValueError(f"chat template 'hf': {tokenizer.directory}: {err}") from err
    return rendered[0]


def _prefix_end(
    tokenizer: Tokenizer, messages: list[dict], count: int, generation_prompt: bool, whole: str
) -> int:
    part = render(tokenizer, messages[:count], generation_prompt)
    if not whole.startswith(part):
        prompt = " and the generation prompt" if generation_prompt else ""
        raise ValueError(
            f"chat template 'hf': {tokenizer.directory}: rendering the first {count} messages"
            f"{prompt} is not a prefix of rendering all {len(messages)}, so the assistant's "
            "tokens cannot be told apart; use a template that renders earlier turns unchanged"
        )
    return len(part)


def _end_of_turn(tokenizer: Tokenizer, span: str, start: int) -> tuple[int, str]:
    """The first special token at or after `start` in `span`: (where it ends, its text)."""
    found = [
        (at, -len(token), token)
        for token in tokenizer.special_strings
        if token and (at := span.find(token, start)) >= 0
    ]
    if not found:
        raise ValueError(
            f"chat template 'hf': {tokenizer.directory}: the assistant turn ending "
            f"{span[-40:]!r} has no special end-of-turn token after its text, so the model "
            "could not learn to stop"
        )
    at, _, token = min(found)  # earliest; the longer token where two start together
    return at + len(token), token


def _split(tokenizer: Tokenizer, messages: list[dict]) -> list[tuple[str, str, str]]:
    """(prompt text, response text, end-of-turn token) per exchange."""
    ends_with_user = bool(messages) and messages[-1]["role"] == "user"
    whole = render(tokenizer, messages, ends_with_user)
    bos = tokenizer.special_tokens.get("bos_token")
    # join_turns and encode_prompt put `<s>` first themselves; do not encode it twice.
    done = len(bos) if bos and whole.startswith(bos) else 0
    out = []
    for j in range(1, len(messages), 2):
        prompt_end = _prefix_end(tokenizer, messages, j, True, whole)
        turn_end = _prefix_end(tokenizer, messages, j + 1, False, whole)
        if not done <= prompt_end <= turn_end:
            raise ValueError(
                f"chat template 'hf': {tokenizer.directory}: message {j} renders before the "
                "end of the previous turn; the assistant's tokens cannot be told apart"
            )
        span, content = whole[prompt_end:turn_end], messages[j]["content"]
        at = span.find(content)
        if at < 0:
            raise ValueError(
                f"chat template 'hf': {tokenizer.directory}: the rendering changes the text of "
                f"assistant message {j}, so its tokens cannot be masked"
            )
        eot_end, eot = _end_of_turn(tokenizer, span, at + len(content))
        out.append((whole[done:prompt_end], span[:eot_end], eot))
        done = prompt_end + eot_end
    if ends_with_user:
        out.append((whole[done:], "", ""))
    return out


def split_exchanges(tokenizer: Tokenizer, messages: list[dict]) -> list[Exchange]:
    """The rendered dialogue as (prompt, response) texts, one per user message; a trailing user
    message gets the generation prompt and an empty response. What follows the last
    end-of-turn token is dropped: it is never trained, and the next packed sample starts
    with `<s>`."""
    return [(prompt, response) for prompt, response, _ in _split(tokenizer, messages)]


def stop_token_ids(tokenizer: Tokenizer) -> list[int]:
    """`</s>` and the template's end-of-turn token, found by rendering a one-exchange probe."""
    [(_, _, eot)] = _split(tokenizer, _PROBE)
    eot_id = tokenizer.token_to_id(eot)
    return [tokenizer.eos] if eot_id in (None, tokenizer.eos) else [tokenizer.eos, eot_id]
