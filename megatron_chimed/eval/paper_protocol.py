"""Protocol `paper` for open generation: the prompts and answer extraction of the authors'
released scripts (Fengshenbang-LM branch dev_bio, fengshen/workspace/ziya_llama2_13b_medical/):

- generate.py (ChiMed QA): the first 5 items of the --dev file as shots,
  ``{H}:{question}\\n{B}:{answer}\\n`` each, then ``{H}:{question.strip()}\\n{B}:``; the model
  samples (top-p 0.85, temperature 1.0, up to 512 new tokens, BOS first) and the answer is
  the text after the last ``{B}:`` of the decoded sequence, "</s>" removed.
- multi_turn_generate.py (dialogues): no shots; every earlier turn as
  ``{H}:{patient}{B}:{doctor}`` with no separator, then ``{H}:{patient}{B}:``.

`{H}`/`{B}` are the config's `roles`: ``<human>``/``<bot>`` (Ziya's chat format, the scripts'
October 2023 release); a December 2023 commit wrote ``[human]``/``[bot]`` instead. Scoring is
paper_metrics.py. Our generation stops at the end of the bot's turn (EOS, or ``<human>`` on
the Megatron model) where the script ran on to EOS and kept the last ``{B}:`` turn; on a
model that ends its turns, as the chat model does, the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence


def qa_prompt(question: str, shots: Sequence[tuple[str, str]], roles: Sequence[str]) -> str:
    """generate.py's input: (question, answer) shots, then the question."""
    human, bot = roles
    examples = "".join(f"{human}:{q}\n{bot}:{a}\n" for q, a in shots)
    return f"{examples}{human}:{question.strip()}\n{bot}:"


def dialogue_prompt(history: Sequence[tuple[str, str]], roles: Sequence[str]) -> str:
    """multi_turn_generate.py's input from (speaker, utterance) turns, speaker "P" (patient)
    or "D" (doctor), ending with the patient. Consecutive utterances of one speaker form one
    turn, joined by a newline (the script's data holds one text per turn)."""
    human, bot = roles
    parts: list[str] = []
    previous = None
    for speaker, text in history:
        if speaker == previous:
            parts.append("\n" + text)
        else:
            parts.append(f"{human if speaker == 'P' else bot}:{text}")
        previous = speaker
    return "".join(parts) + f"{bot}:"


def extract_answer(generated: str, roles: Sequence[str]) -> str:
    """The script's answer: past the last `{B}:` (the prompt's own when the model wrote none),
    with "</s>" removed; char_split strips the rest."""
    bot_tag = f"{roles[1]}:"
    text = generated.replace(f"{bot_tag} ", bot_tag).replace("</s>", "")
    return text.split(bot_tag)[-1]
