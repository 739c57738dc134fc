"""Converted checkpoints loaded into built models at several TP sizes: one 4-process launch.

Tiny fp32 model at TP=1 and TP=2: logits vs `transformers` for three ways in (load_model_weights,
a plain dist_checkpointing.load, load_hf_weights); checkpoint keys vs model.sharded_state_dict();
save_model_weights -> load_model_weights round trip. 13B-shaped 2-layer model (bf16) at TP=2 and
TP=4: local shapes, zero vocab padding, TP shards equal to the mapping's split of the HF tensors.
Rank 0 writes the results to --out.
"""

import argparse
import dataclasses
import json
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist

from megatron_chimed.checkpoint.layout import read_latest
from megatron_chimed.checkpoint.weights import load_model_weights, save_model_weights
from megatron_chimed.convert import load_hf_weights
from megatron_chimed.convert.hf_folder import HFCheckpoint
from megatron_chimed.convert.verify import compare, hf_logits, megatron_logits, token_batch
from megatron_chimed.model import ModelConfig, ParallelConfig, build_model, builder, unwrap
from megatron_chimed.platform import destroy, initialize


def all_true(flag: bool) -> bool:
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def tiny_checks(hf_dir: str, ckpt: str, save_root: str, tp: int) -> dict:
    from megatron.core import dist_checkpointing, parallel_state

    initialize(tensor_parallel=tp, seed=100 + tp)
    hf = HFCheckpoint(hf_dir)
    tokens = token_batch(hf.model.vocab_size, 2, 32)
    reference = hf_logits(hf_dir, tokens[:, :-1], torch.float32)

    def diff(model: torch.nn.Module) -> float:
        return compare(reference, megatron_logits(model, tokens[:, :-1]), tokens).max_abs_logit_diff

    out = {}
    model = build_model(hf.model, ParallelConfig(tp), "fp32")
    metadata = load_model_weights(model, ckpt)
    out["metadata"] = {k: metadata[k] for k in ("kind", "iteration", "architecture", "spec")}
    out["load_model_weights"] = diff(model)

    plain = build_model(hf.model, ParallelConfig(tp), "fp32")
    state = dist_checkpointing.load({"model": plain.sharded_state_dict()}, ckpt + "/iter_0000000")
    plain.load_state_dict(state["model"])
    out["dist_checkpointing_load"] = diff(plain)

    direct = build_model(hf.model, ParallelConfig(tp), "fp32")
    load_hf_weights(direct, hf_dir)
    out["load_hf_weights"] = diff(direct)

    stored = dist_checkpointing.load_tensors_metadata(ckpt + "/iter_0000000")
    wanted = {sh.key for sh in model.sharded_state_dict().values() if "_extra_state" not in sh.key}
    out["missing_keys"] = sorted(wanted - set(stored))

    root = f"{save_root}/tp{tp}"
    save_model_weights(model, root, 5, {"kind": "test"})
    again = build_model(hf.model, ParallelConfig(tp), "fp32")
    saved = load_model_weights(again, root)
    out["saved_metadata"] = {k: saved[k] for k in ("kind", "iteration", "spec")}
    out["latest"] = read_latest(root).name
    out["resave_diff"] = diff(again)
    parallel_state.destroy_model_parallel()
    return out


def big_checks(hf_dir: str, ckpt: str, tp: int) -> dict:
    from megatron.core import parallel_state

    initialize(tensor_parallel=tp)
    hf = HFCheckpoint(hf_dir)
    model_cfg: ModelConfig = hf.model
    # The weights come from the checkpoint: skip megatron's random init of 1B parameters on
    # each of 4 ranks, which costs minutes on 2 cores.
    make_config = builder.transformer_config
    no_init = lambda *a, **kw: dataclasses.replace(
        make_config(*a, **kw), perform_initialization=False
    )
    with mock.patch.object(builder, "transformer_config", no_init):
        model = build_model(model_cfg, ParallelConfig(tp), "bf16")
    load_model_weights(model, ckpt)
    gpt = unwrap(model)
    rank = parallel_state.get_tensor_model_parallel_rank()
    params = dict(gpt.named_parameters())
    shapes = {name: list(p.shape) for name, p in params.items()}
    embedding = params["embedding.word_embeddings.weight"]
    # Rows past the true vocabulary live on the last TP rank and must be zero.
    first_padded = model_cfg.vocab_size - rank * embedding.shape[0]
    padding_zero = bool((embedding[max(first_padded, 0) :] == 0).all())
    shards_equal = True
    for entry, layer in hf.mapping.entries(model_cfg):
        if layer not in (None, 1):
            continue
        full = entry.to_megatron([hf.read(k) for k in hf.mapping.hf_names(entry, layer)], model_cfg)
        expected = entry.tp_shard(full, rank, tp, model_cfg)
        got = params[hf.mapping.parameter_name(entry, layer, "local")]
        shards_equal &= torch.equal(expected, got)
    parallel_state.destroy_model_parallel()
    return {
        "shapes": shapes,
        "padding_zero": all_true(padding_zero),
        "shards_equal": all_true(shards_equal),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny-hf", required=True)
    ap.add_argument("--tiny-megatron", required=True)
    ap.add_argument("--big-hf", required=True)
    ap.add_argument("--big-megatron", required=True)
    ap.add_argument("--save-root", required=True)
    args = ap.parse_args()
    results = {}
    for tp in (1, 2):
        results[f"tiny_tp{tp}"] = tiny_checks(args.tiny_hf, args.tiny_megatron, args.save_root, tp)
    for tp in (2, 4):
        results[f"big_tp{tp}"] = big_checks(args.big_hf, args.big_megatron, tp)
    rank = dist.get_rank()
    destroy()
    if rank == 0:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
