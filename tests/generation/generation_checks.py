"""Generation on the tiny model at TP=1 and TP=2 in one 2-process launch (test_generation_tp.py).

Weights: the tiny fp32 HF folder, loaded with `convert.load_hf_weights` at each TP, so the
test can compare with `transformers` on the same folder. The TP=1 model is also saved as a
checkpoint in our layout (--ckpt) for the chat.py tests.
Rank 0 writes every result to --out; the test asserts on them.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_chimed.checkpoint import layout
from megatron_chimed.checkpoint.layout import copy_tokenizer
from megatron_chimed.checkpoint.weights import save_model_weights
from megatron_chimed.convert import load_hf_weights
from megatron_chimed.eval.megatron_model import MegatronLoglikelihood
from megatron_chimed.generation import GenerationConfig, encode_prompt, generate, generate_ids
from megatron_chimed.generation.eval_model import MegatronEvalModel
from megatron_chimed.model import ParallelConfig, build_model, unwrap
from megatron_chimed.platform import destroy, initialize
from megatron_chimed.testing.eval_reference import LM_EVAL_FIXTURE, read_reference
from megatron_chimed.testing.tiny_ziya import TINY
from megatron_chimed.tokenizer import ZiyaTokenizer

PROMPTS = [
    [{"role": "user", "content": "头痛怎么办？"}],
    [
        {"role": "user", "content": "发烧了"},
        {"role": "assistant", "content": "多喝水。"},
        {"role": "user", "content": "还要吃药吗？需要去医院检查血常规吗？"},
    ],
    "<human>:咳嗽\n<bot>:",
]
GREEDY = GenerationConfig(max_new_tokens=24, batch_size=3)
STATIC = dataclasses.replace(GREEDY, engine="static")
SAMPLED = GenerationConfig(
    max_new_tokens=16, temperature=0.9, top_k=50, top_p=0.95, seed=7, num_samples=2, batch_size=4
)


def sampled_subset(
    model: torch.nn.Module, sample_rows: list[list[int]], tokenizer: ZiyaTokenizer, stops: list[int]
) -> list[list[int]]:
    """Rows 2.. of the sampled rows through the static engine in batches of 1, preceded by
    two one-token rows: every row has new neighbours but its old index."""
    rows = [[tokenizer.bos], [tokenizer.bos], *sample_rows[2:]]
    cfg = dataclasses.replace(SAMPLED, engine="static", batch_size=1)
    return generate_ids(model, rows, cfg, tokenizer.vocab_size, stops)[2:]


def save_checkpoint(model: torch.nn.Module, root: str, hf_dir: str) -> None:
    """The TP=1 weights as a checkpoint in our layout, for the chat.py tests."""
    if dist.get_rank() == 0:
        copy_tokenizer(Path(hf_dir), Path(root) / layout.TOKENIZER)
    metadata = {"kind": "converted", "model": dataclasses.asdict(TINY)}
    save_model_weights(model, root, 0, metadata)


def poison_padded_vocab(model: torch.nn.Module) -> None:
    """Give the padded output rows huge random weights: some padded logit then dominates every
    step, so a generator that forgot to mask them would pick it."""
    from megatron.core import parallel_state

    weight = unwrap(model).output_layer.weight
    rows = weight.shape[0]
    first = parallel_state.get_tensor_model_parallel_rank() * rows
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for local in range(max(TINY.vocab_size - first, 0), rows):
            weight[local] = 100.0 * torch.randn(weight.shape[1], generator=gen)


def lm_eval_docs() -> list[dict]:
    reference = read_reference(LM_EVAL_FIXTURE / "reference.json")
    return [doc for docs in reference["samples"].values() for doc in docs]


def checks(tp: int, hf_dir: str, ckpt: str) -> dict:
    tokenizer = ZiyaTokenizer(hf_dir)
    model = build_model(TINY, ParallelConfig(tensor_model_parallel_size=tp), "fp32")
    load_hf_weights(model, hf_dir)
    if tp == 1:
        save_checkpoint(model, ckpt, hf_dir)
    result = {}
    rows = [encode_prompt(tokenizer, p, GREEDY) for p in PROMPTS]
    stops = [tokenizer.eos, tokenizer.human]
    result["prompt_ids"] = rows

    def ids(cfg: GenerationConfig) -> list[list[int]]:
        return generate_ids(model, rows, cfg, tokenizer.vocab_size, stops)

    # The default engine is the dynamic one; the static one is the reference it must equal.
    result["greedy"] = ids(GREEDY)
    result["greedy_static"] = ids(STATIC)
    result["greedy_recompute"] = ids(dataclasses.replace(STATIC, use_kv_cache=False))
    result["greedy_one_by_one"] = [
        generate_ids(model, [row], GREEDY, tokenizer.vocab_size, stops)[0] for row in rows
    ]
    result["greedy_text"] = generate(model, tokenizer, PROMPTS, GREEDY)
    sample_rows = [row for row in rows for _ in range(SAMPLED.num_samples)]

    def sampled(cfg: GenerationConfig) -> list[list[int]]:
        return generate_ids(model, sample_rows, cfg, tokenizer.vocab_size, stops)

    result["sampled"] = sampled(SAMPLED)
    result["sampled_again"] = sampled(SAMPLED)
    result["sampled_static"] = sampled(dataclasses.replace(SAMPLED, engine="static"))
    result["sampled_seed8"] = sampled(dataclasses.replace(SAMPLED, seed=8))
    result["sampled_text"] = generate(model, tokenizer, PROMPTS, SAMPLED)
    # Rows 2..5 alone (another batch, other neighbours): row i keeps key (seed, i) only
    # through its index, so they are shifted to their old places with two leading rows.
    result["sampled_subset"] = sampled_subset(model, sample_rows, tokenizer, stops)
    limits = [3, 24, 7]
    result["greedy_limits"] = generate_ids(
        model, rows, GREEDY, tokenizer.vocab_size, stops, limits=limits
    )
    result["greedy_limits_static"] = generate_ids(
        model, rows, STATIC, tokenizer.vocab_size, stops, limits=limits
    )

    texts = [p for p in PROMPTS if isinstance(p, str)]
    eval_model = MegatronEvalModel(model, tokenizer)
    result["eval_generate"] = eval_model.generate(texts, max_new_tokens=8, seed=0)
    result["eval_logprobs"] = eval_model.next_token_logprobs(texts + ["头痛"], ["是", "否"])
    # protocol=lm_eval's continuation scores, on the questions lm-eval itself scored
    requests = [(d["context"], c) for d in lm_eval_docs() for c in d["continuations"]]
    scorer = MegatronLoglikelihood(eval_model, model, tokenizer, 3)
    result["lm_eval_loglikelihoods"] = scorer.loglikelihood(requests)

    poison_padded_vocab(model)
    result["greedy_poisoned"] = ids(GREEDY)
    result["sampled_poisoned"] = sampled(SAMPLED)
    return result


def main() -> None:
    from megatron.core import parallel_state

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--hf", required=True)
    ap.add_argument("--ckpt", required=True)
    args = ap.parse_args()

    layout = initialize(tensor_parallel=1, seed=1234)
    # What the tests run chat.py with (they must not import this script).
    results = {"prompts": PROMPTS, "max_new_tokens": GREEDY.max_new_tokens}
    results["tp1"] = checks(1, args.hf, args.ckpt)
    parallel_state.destroy_model_parallel()
    initialize(tensor_parallel=2, seed=99)  # another seed: weights must come from the HF folder
    results["tp2"] = checks(2, args.hf, args.ckpt)
    destroy()
    if layout.rank == 0:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
