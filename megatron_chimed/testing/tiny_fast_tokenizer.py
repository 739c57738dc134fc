"""Tokenizer folders in the shape transformers 5 saves (`tokenizer.json` + `tokenizer_config.json`,
no `tokenizer.model`), built here from the bundled sample text: nothing is downloaded.

- `make_chatml_tokenizer`: a byte-level BPE (GPT-2 / Qwen style) with ChatML special tokens and
  a ChatML `chat_template`, i.e. a model that is not Ziya at all.
- `resave_with_transformers`: an existing folder (the tiny Ziya) loaded and saved again by
  transformers, which converts its sentencepiece model into a `tokenizer.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_chimed.testing.tiny_ziya import sample_texts

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
#: ChatML as Qwen / transformers write it, with `<s>` first as LLaMA-family templates do.
CHATML = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def make_chatml_tokenizer(
    out_dir: str | Path, vocab_size: int = 600, chat_template: str | None = CHATML
) -> Path:
    """Train a byte-level BPE on the sample text and save it as transformers 5 would."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=False)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sample_texts(), trainer)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": 4096,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def resave_with_transformers(src: str | Path, out_dir: str | Path) -> Path:
    """`AutoTokenizer.from_pretrained(src).save_pretrained(out_dir)` on local files only."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(out_dir)
    return Path(out_dir)
