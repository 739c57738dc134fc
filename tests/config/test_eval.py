"""config/eval.py: the `protocol` of multiple-choice and text-generation tasks, typed, with
errors naming the key, and the values a `null` key takes from its protocol."""

from __future__ import annotations

import pytest

from megatron_chimed.config import ConfigError
from megatron_chimed.config.eval import MultiChoiceConfig, TextGenerationConfig
from megatron_chimed.config.load import load


def test_protocols_default_to_today_s():
    assert load(["+eval=ceval"]).eval.protocol == "official"
    qa = load(["+eval=chimed_qa"]).eval
    assert qa.protocol == "standard"
    assert (qa.setting("max_new_tokens"), qa.setting("shots"), qa.prompt_template()) == (
        256,
        0,
        "<human>:{prompt}\n<bot>:",
    )
    assert load(["+eval=mc_dialogue"]).eval.setting("max_new_tokens") == 128


def test_paper_protocol_takes_the_script_s_settings_where_unset():
    qa = load(["+eval=chimed_qa", "eval.protocol=paper"]).eval
    settings = [qa.setting(k) for k in ("max_new_tokens", "shots", "temperature", "top_p")]
    assert settings == [512, 5, 1.0, 0.85]
    assert qa.prompt_template() == "{prompt}"
    # a key set by hand wins over the protocol's value
    qa = load(["+eval=chimed_qa", "eval.protocol=paper", "eval.top_p=0.9"]).eval
    assert qa.setting("top_p") == 0.9


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+eval=ceval", "eval.protocol=lm-eval"], r"'eval.protocol': 'lm-eval' is not one of"),
        (["+eval=medqa", "eval.protocol=lm_eval"], r"'eval.protocol': .*format medqa has no"),
        (["+eval=my_mc", "eval.protocol=lm_eval"], r"'eval.protocol': .*format jsonl has no"),
        (
            ["+eval=cmmlu", "eval.protocol=lm_eval", "eval.mode=generate"],
            r"'eval.mode': protocol lm_eval scores log-likelihoods",
        ),
        (
            ["+eval=suite", "eval.tasks.ceval.protocol=lm_eval",
             "eval.tasks.ceval.template='<human>:{prompt}'"],
            r"'eval.tasks.ceval.template': protocol lm_eval feeds lm-eval's prompt as is",
        ),
        (["+eval=chimed_qa", "eval.protocol=papers"], r"'eval.protocol': 'papers' is not one"),
        (["+eval=chimed_qa", "eval.shots=3"], r"'eval.shots': protocol standard is zero-shot"),
        (["+eval=my_qa", "eval.protocol=paper"], r"'eval.shot_file': protocol paper prompts"),
        (
            ["+eval=mc_dialogue", "eval.protocol=paper", "+eval.shots=5"],
            r"'eval.shots': the paper's dialogue script prompts with the dialogue only",
        ),
        (
            ["+eval=chimed_qa", "eval.protocol=paper", "eval.template='Q:{prompt}'"],
            r"'eval.template': protocol paper writes its own <human>/<bot> turns",
        ),
        (["+eval=chimed_qa", "eval.top_p=0"], r"'eval.top_p': 0.0 is out of range"),
        (["+eval=chimed_qa", "eval.temperature=-1"], r"'eval.temperature': -1.0 is out of range"),
    ],
)  # fmt: skip
def test_bad_protocol_settings_name_their_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(overrides)


def test_dataclasses_validate_without_hydra():
    MultiChoiceConfig(
        format="cmmlu", data_dir="d", subjects=["anatomy"], split="test", shot_split="dev",
        protocol="lm_eval",
    ).validate("eval")  # fmt: skip
    with pytest.raises(ValueError, match="'x.roles': two speaker tags"):
        TextGenerationConfig(
            kind="qa_jsonl", data_file="f", protocol="paper", shots=0, roles=["<human>"]
        ).validate("x")
