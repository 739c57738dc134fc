"""Write a tiny random LLaMA in Ziya-13B-v2's file layout, with a tokenizer trained here.

Layout (as the real Ziya / ChiMed-GPT folders): `config.json` (LlamaForCausalLM),
`pytorch_model-0000K-of-0000N.bin` shards + `pytorch_model.bin.index.json` (or the safetensors
equivalents), `generation_config.json`, and `tokenizer.model` + `added_tokens.json` with
`<human>` / `<bot>` appended after the sentencepiece pieces. The vocabulary size is deliberately
not a multiple of 128, as Ziya's 39410 is not, so vocab padding is exercised.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from megatron_chimed.config.schema import SAMPLE_DATA, ModelConfig
from megatron_chimed.convert.hf_folder import hf_config
from megatron_chimed.tokenizer import BOT, HUMAN

SP_PIECES = 1998  # + <human>, <bot> = 2000: not a multiple of 128, as 39410 is not

TINY = ModelConfig(
    name="tiny",
    hidden_size=64,
    num_layers=2,
    num_attention_heads=4,
    num_query_groups=4,
    ffn_hidden_size=176,
    vocab_size=SP_PIECES + 2,
    max_position_embeddings=1024,  # room for 5-shot evaluation prompts
)


def sample_texts() -> Iterator[str]:
    """Every `text` of the bundled pre-train sample: what the tiny tokenizer learns from."""
    for path in sorted((SAMPLE_DATA / "pretrain").glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["text"]


def train_tokenizer(out_dir: Path, pieces: int = SP_PIECES) -> None:
    """A LLaMA-style sentencepiece BPE (byte fallback, split digits) plus Ziya's added tokens."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sample_texts(),
        model_writer=model,
        vocab_size=pieces,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        character_coverage=0.9995,  # the rarest characters fall back to bytes, as in LLaMA
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # one thread: the same pieces on every machine
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    added = {"<unk>": 0, "<s>": 1, "</s>": 2, HUMAN: pieces, BOT: pieces + 1}
    (out_dir / "added_tokens.json").write_text(json.dumps(added, indent=2))
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2)
    )
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": 4096,
            },
            indent=2,
        )
    )


def random_state_dict(model: ModelConfig, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM tensors, N(0, std) weights and ones-ish norms, in HF key order."""
    gen = torch.Generator().manual_seed(seed)
    h, f, v, d = model.hidden_size, model.ffn_hidden_size, model.vocab_size, model.head_dim
    kv = model.num_query_groups * d

    def normal(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * model.init_method_std).to(dtype)

    def norm() -> torch.Tensor:
        # Not exactly ones: a converter that swapped two norms would still pass with ones.
        return (1.0 + 0.1 * torch.randn(h, generator=gen)).to(dtype)

    sd = {"model.embed_tokens.weight": normal(v, h)}
    for i in range(model.num_layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = normal(h, h)
        sd[p + "self_attn.k_proj.weight"] = normal(kv, h)
        sd[p + "self_attn.v_proj.weight"] = normal(kv, h)
        sd[p + "self_attn.o_proj.weight"] = normal(h, h)
        sd[p + "mlp.gate_proj.weight"] = normal(f, h)
        sd[p + "mlp.up_proj.weight"] = normal(f, h)
        sd[p + "mlp.down_proj.weight"] = normal(h, f)
        sd[p + "input_layernorm.weight"] = norm()
        sd[p + "post_attention_layernorm.weight"] = norm()
    sd["model.norm.weight"] = norm()
    sd["lm_head.weight"] = normal(v, h)
    return sd


def write_shards(
    sd: dict[str, torch.Tensor], out_dir: Path, shards: int, safetensors: bool
) -> None:
    """Split by key order into `shards` files plus the index json, like `save_pretrained`."""
    keys = list(sd)
    per = -(-len(keys) // shards)
    weight_map: dict[str, str] = {}
    for k in range(shards):
        part = {key: sd[key].contiguous() for key in keys[k * per : (k + 1) * per]}
        if safetensors:
            from safetensors.torch import save_file

            name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, str(out_dir / name), metadata={"format": "pt"})
        else:
            name = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
            torch.save(part, out_dir / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in sd.values())},
        "weight_map": weight_map,
    }
    index_name = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    (out_dir / index_name).write_text(json.dumps(index, indent=2))


def make_tiny_ziya(
    out_dir: str | os.PathLike,
    model: ModelConfig = TINY,
    safetensors: bool = False,
    dtype: str = "bfloat16",
    shards: int = 3,
    seed: int = 0,
) -> Path:
    """Write the whole folder (atomically: a temp folder renamed at the end) and return it."""
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or pick another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        train_tokenizer(tmp, pieces=model.vocab_size - 2)
        torch_dtype = getattr(torch, dtype)
        (tmp / "config.json").write_text(json.dumps(hf_config(model, dtype), indent=2))
        (tmp / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2)
        )
        write_shards(random_state_dict(model, seed, torch_dtype), tmp, shards, safetensors)
        (tmp / "megatron_chimed_model.json").write_text(json.dumps(asdict(model), indent=2))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF folder (safetensors and .bin shards), by name."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    for path in sorted(folder.glob("*.bin")):
        tensors.update(torch.load(path, weights_only=True))
    return tensors
