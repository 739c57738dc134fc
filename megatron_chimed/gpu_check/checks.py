"""The correctness sections: environment, TE vs local spec, packed SFT, reward model,
generation. Each takes the shared `CheckContext` and returns one `CheckResult`; every figure is
measured with the project's own code (builder, loader, SFT stage, `score_texts`,
`generate_ids`) on the compute device."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from megatron_chimed.gpu_check.context import (
    CheckContext,
    release,
    synchronize,
    te_attention_log,
)
from megatron_chimed.gpu_check.results import CheckResult, skipped, verdict
from megatron_chimed.platform.gpu_versions import check_gpu_stack, versions
from megatron_chimed.tokenizer import Tokenizer, load_tokenizer

LOSS_TOLERANCE = 2e-2  # bf16: TE's fused kernels and megatron's local ones round differently
COSINE_MIN = 0.999
SCORE_TOLERANCE = 1e-2  # bf16 reward scores of one text in batches of different shapes
ISOLATION_TOLERANCE = 5e-2  # bf16, THD vs one sequence may run different kernels (sharp model)
# Leaking attention across packed samples must move a later sample's loss by more than this,
# or the isolation comparison could not tell isolated from leaking (see check_packed_sft).
LEAK_MARGIN = 4 * ISOLATION_TOLERANCE
# The tiny model's weights (std 0.02) give near-uniform attention and near-uniform logits: a
# sample that also saw its neighbours would score almost the same loss, and the comparison
# could not fail. Scaled up, attention is sharp, writes strongly into the residual stream and
# the logits are spread, so a leak moves a sample's loss by 0.1-1.4 here; isolation itself
# does not depend on the weights.
SHARPEN = {"linear_qkv.weight": 4.0, "linear_proj.weight": 4.0, "output_layer.weight": 20.0}


def check_environment(extra: dict | None = None) -> CheckResult:
    """Versions and the version gate; also whether megatron-core and TE import at all."""
    found = versions()
    problems = check_gpu_stack()
    try:
        import megatron.core  # noqa: F401
    except Exception as err:  # a bare node: report it here, the other checks are skipped
        problems.append(f"megatron-core does not import: {type(err).__name__}: {err}")
    figures = {
        **found,
        **(extra or {}),
        "problems": problems,
        "nvte_env": {k: v for k, v in os.environ.items() if k.startswith("NVTE_")},
    }
    gpu = f"{found['gpu']} {found['gpu_memory_gib']} GiB" if found.get("gpu") else "no GPU"
    summary = (
        f"{gpu}, torch {found['torch']} (CUDA {found['torch_cuda']}), driver {found['driver']}, "
        f"cuDNN {found['cudnn_torch']}, TE {found['transformer_engine']}, flash-attn "
        f"{found['flash_attn']}, megatron-core {found['megatron_core']}"
    )
    return verdict("environment", not problems, figures, "; ".join([summary, *problems]))


def _forward(
    model: torch.nn.Module, tokens: torch.Tensor, vocab: int, ctx: CheckContext
) -> tuple[float, torch.Tensor]:
    """(mean loss over the true vocabulary, full-vocabulary fp32 logits [b, s, vocab])."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_chimed.training.loss import token_losses

    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    positions = torch.arange(inputs.shape[1], device=ctx.device).expand_as(inputs)
    model.eval()
    with torch.no_grad():
        logits = model(inputs, positions, None)  # this TP rank's vocab shard
        loss = token_losses(logits, labels, vocab).mean().item()
        full = gather_from_tensor_model_parallel_region(logits)[..., :vocab].float()
    return loss, full


def check_te_vs_local(ctx: CheckContext) -> CheckResult:
    """The converted tiny checkpoint through both layer specs, same tokens, bf16."""
    from megatron_chimed.convert.verify import token_batch

    name, vocab = "te_vs_local", ctx.model.vocab_size
    tokens = token_batch(vocab, 2, min(128, ctx.sizes.seq_length)).to(ctx.device)
    local_loss, local_logits = _forward(ctx.build("local"), tokens, vocab, ctx)
    release()
    figures: dict = {"loss_local": local_loss}
    if not ctx.te:
        return skipped(name, f"{ctx.te_reason}; local spec alone: loss {local_loss:.4f}", figures)
    with te_attention_log() as log:
        te_loss, te_logits = _forward(ctx.build("transformer_engine"), tokens, vocab, ctx)
    release()
    cosine = F.cosine_similarity(te_logits, local_logits, dim=-1)  # one per position
    figures.update(
        loss_te=te_loss,
        loss_diff=abs(te_loss - local_loss),
        cosine_min=cosine.min().item(),
        cosine_mean=cosine.mean().item(),
        te_attention_log=log,
    )
    backend = log[-1] if log else "backend not logged (NVTE_DEBUG was set after TE's import?)"
    ok = figures["loss_diff"] <= LOSS_TOLERANCE and figures["cosine_min"] > COSINE_MIN
    return verdict(
        name,
        ok,
        figures,
        f"loss TE {te_loss:.4f} vs local {local_loss:.4f} (|d| {figures['loss_diff']:.2e} <= "
        f"{LOSS_TOLERANCE}), logit cosine min {figures['cosine_min']:.5f} (> {COSINE_MIN}); "
        f"{backend}",
    )


def _segment_means(per_token: torch.Tensor, mask: torch.Tensor, bounds: list[int]) -> list[float]:
    return [
        float((per_token[a:b] * mask[a:b]).sum() / mask[a:b].sum().clamp(min=1))
        for a, b in zip(bounds[:-1], bounds[1:])
    ]


def _alone_loss(
    model: torch.nn.Module, ids: Sequence[int], mask: Sequence[int], ctx: CheckContext
) -> float:
    """One sample as its own sequence with the default causal mask, padded at the end to a
    multiple of TP (sequence parallelism splits the sequence); pads are not counted."""
    from megatron_chimed.training.loss import token_losses

    length = len(ids) - 1
    width = -(-length // ctx.tp) * ctx.tp
    tokens = torch.zeros((1, width + 1), dtype=torch.long)
    tokens[0, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    weights = torch.zeros(width)
    weights[:length] = torch.as_tensor(mask[1:], dtype=torch.float32)
    tokens, weights = tokens.to(ctx.device), weights.to(ctx.device)
    positions = torch.arange(width, device=ctx.device)[None]
    with torch.no_grad():
        logits = model(tokens[:, :-1], positions, None)
        per_token = token_losses(logits, tokens[:, 1:], ctx.model.vocab_size)[0]
    return _segment_means(per_token, weights, [0, width])[0]


def _sharpen(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            for suffix, factor in SHARPEN.items():
                if name.endswith(suffix):
                    param.mul_(factor)


def check_packed_sft(ctx: CheckContext) -> CheckResult:
    """Two packed `isolated` rows through `SFTStage.forward_step` (THD `PackedSeqParams` with
    TE, a block-diagonal mask on the CPU): each sample's loss equals the sample run alone, and
    the backward runs. Control: the same rows as one causal sequence (`concat`) must move the
    later samples' losses by more than LEAK_MARGIN, else the comparison proves nothing."""
    from megatron_chimed.gpu_check.train_check import sft_config
    from megatron_chimed.stages.sft import SFTStage
    from megatron_chimed.training.loss import token_losses

    name = "packed_sft"
    if ctx.device.type == "cuda" and not ctx.te:
        return skipped(name, f"isolated packing on a GPU needs TE's THD attention: {ctx.te_reason}")
    cfg = sft_config(ctx, ctx.work / "packed_sft")
    stage = SFTStage(cfg, load_tokenizer(ctx.tokenizer_dir))
    rows = stage.datasets((4, 0, 0))[0].rows
    order = sorted(range(len(rows)), key=lambda i: -len(rows.samples(i)))[:2]
    batch = torch.utils.data.default_collate([rows[i] for i in order])
    samples = [rows.samples(i) for i in order]
    seq = rows.seq_length
    starts = []  # per row: where each sample starts in the row's input positions, then its end
    for row in samples:
        starts.append([0])
        for ids, _ in row:
            starts[-1].append(starts[-1][-1] + len(ids))
    # The micro-batch's rows laid end to end, as the THD path flattens them.
    bounds = [[k * seq + s for s in row] for k, row in enumerate(starts)]

    model = ctx.build()
    _sharpen(model)
    model.train()
    logits, loss_func = stage.forward_step(iter([batch]), model)
    labels, loss_mask = loss_func.keywords["labels"], loss_func.keywords["loss_mask"]
    per_token = token_losses(logits, labels, ctx.model.vocab_size).reshape(-1)
    flat_mask = loss_mask.reshape(-1).float()
    packed = [m for b in bounds for m in _segment_means(per_token.detach(), flat_mask, b)]
    loss_sum, count, _ = loss_func(logits)
    (loss_sum / count).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    with_grad = sum(g is not None and bool(g.abs().sum() > 0) for g in grads)
    finite = all(g is None or bool(torch.isfinite(g).all()) for g in grads)

    model.eval()
    alone_rows = [[_alone_loss(model, ids, mask, ctx) for ids, mask in row] for row in samples]
    alone = [a for row in alone_rows for a in row]
    gaps = []  # the control: each row as one causal sequence, samples see earlier ones
    with torch.no_grad():
        for k, index in enumerate(order):
            row = {key: value[None].to(ctx.device) for key, value in rows[index].items()}
            out = model(row["tokens"], row["position_ids"], None)
            losses = token_losses(out, row["labels"], ctx.model.vocab_size)[0]
            leaked = _segment_means(losses, row["loss_mask"][0].float(), starts[k])
            gaps += [abs(x - a) for x, a in zip(leaked[1:], alone_rows[k][1:])]
    diffs = [abs(p - a) for p, a in zip(packed, alone)]
    figures = {
        "samples_per_row": [len(r) for r in samples],
        "packed": packed,
        "alone": alone,
        "max_diff": max(diffs),
        "leak_control_min_gap": min(gaps) if gaps else None,
        "leak_control_gaps": gaps,
        "params_with_grad": with_grad,
        "params": len(grads),
        "grads_finite": finite,
        "thd": bool(getattr(stage, "thd", False)),
    }
    ok = (
        figures["max_diff"] <= ISOLATION_TOLERANCE
        and bool(gaps)
        and min(gaps) > LEAK_MARGIN
        and finite
        and with_grad == len(grads)
    )
    path = "THD PackedSeqParams" if figures["thd"] else "block-diagonal mask"
    return verdict(
        name,
        ok,
        figures,
        f"{len(packed)} samples in 2 rows ({path}): packed vs alone max |d| "
        f"{figures['max_diff']:.2e} (<= {ISOLATION_TOLERANCE}); leaking control moves them by "
        f">= {figures['leak_control_min_gap'] or 0:.3f} (> {LEAK_MARGIN}); backward: "
        f"{with_grad}/{len(grads)} params with finite non-zero grads",
    )


def _reward_records(count: int) -> list:
    """Records (question, answers best first) of the bundled reward sample, repeated to
    `count`."""
    from megatron_chimed.reward.data import RewardDataConfig, read_ranked_jsonl
    from megatron_chimed.testing.tiny_ziya import SAMPLE_DATA

    records, _ = read_ranked_jsonl(SAMPLE_DATA / "reward" / "valid.jsonl", RewardDataConfig())
    return (records * (1 + count // len(records)))[:count]


def _reward_texts(count: int) -> list[tuple[str, str]]:
    """(question, answer) pairs: each question with its best and its worst answer."""
    pairs = [
        (r.prompt, a) for r in _reward_records(count) for a in (r.responses[0], r.responses[-1])
    ]
    return pairs[:count]


def check_reward(ctx: CheckContext) -> CheckResult:
    """The RM built as the RM stage builds it, its trunk from the converted checkpoint, scored
    with `score_texts`: the value head sits on the compute device, scores are finite and do
    not depend on how the texts are batched."""
    from megatron_chimed.data.template import get_template
    from megatron_chimed.gpu_check.context import fresh_attention_env
    from megatron_chimed.model import unwrap
    from megatron_chimed.reward.model import VALUE_HEAD, build_reward_model, init_from_sft
    from megatron_chimed.reward.score import score_texts

    fresh_attention_env()
    model = build_reward_model(ctx.model, ctx.parallel(), ctx.precision, ctx.sizes.seq_length)
    init_from_sft(model, ctx.converted)
    model.eval()
    gpt = unwrap(model)
    head_device = getattr(gpt, VALUE_HEAD).weight.device
    trunk_device = gpt.embedding.word_embeddings.weight.device
    tokenizer, template = load_tokenizer(ctx.tokenizer_dir), get_template("ziya")
    texts = _reward_texts(8)
    seq = ctx.sizes.seq_length
    synchronize()
    start = time.perf_counter()
    scores = score_texts(model, tokenizer, texts, template, seq, batch_size=4)
    synchronize()
    seconds = time.perf_counter() - start
    one_by_one = score_texts(model, tokenizer, texts[:4], template, seq, batch_size=1)
    del model, gpt
    release()
    batch_diff = max(abs(a - b) for a, b in zip(scores, one_by_one))
    finite = all(torch.isfinite(torch.tensor(scores)).tolist())
    on_device = head_device == trunk_device and trunk_device.type == ctx.device.type
    figures = {
        "scores": scores,
        "head_device": str(head_device),
        "trunk_device": str(trunk_device),
        "batch_invariance_max_diff": batch_diff,
        "texts_per_s": len(texts) / seconds,
    }
    ok = on_device and finite and len(scores) == len(texts) and batch_diff <= SCORE_TOLERANCE
    return verdict(
        "reward",
        ok,
        figures,
        f"{len(scores)} texts scored, value head on {head_device} (trunk {trunk_device}), "
        f"finite {finite}, batch 4 vs 1 max |d| {batch_diff:.1e} (<= {SCORE_TOLERANCE}), "
        f"{figures['texts_per_s']:.1f} texts/s",
    )


def _prompts(tokenizer: Tokenizer, count: int) -> list[list[int]]:
    """The reward sample's questions as chat prompts (`<s><human>:...\n<bot>:`)."""
    from megatron_chimed.data.template import get_template

    template = get_template("ziya")
    return [
        template.encode_prompt(tokenizer, [{"role": "user", "content": r.prompt}])
        for r in _reward_records(count)
    ]


def check_generation(ctx: CheckContext) -> CheckResult:
    """Greedy decoding with the KV cache and with full recompute give the same tokens (fp32:
    in bf16 a near-tie between two logits may flip, which is rounding, not a cache bug; the
    bf16 agreement is reported); bf16 tokens/s with the cache at each batch size."""
    from megatron_chimed.config.stages import GenerationConfig
    from megatron_chimed.data.template import get_template
    from megatron_chimed.generation.decode import generate_ids
    from megatron_chimed.generation.loading import load_for_generation
    from megatron_chimed.gpu_check.context import fresh_attention_env

    new = ctx.sizes.gen_new_tokens
    figures: dict = {}

    def decode(
        model: torch.nn.Module, prompts: list[list[int]], kv: bool, stops: list[int], batch: int = 8
    ) -> list[list[int]]:
        cfg = GenerationConfig(max_new_tokens=new, use_kv_cache=kv, batch_size=batch)
        return generate_ids(model, prompts, cfg, tokenizer.vocab_size, stops)

    fresh_attention_env()
    model, tokenizer = load_for_generation(ctx.converted, ctx.tp, "fp32")
    stops = get_template("ziya").stop_token_ids(tokenizer)
    prompts = _prompts(tokenizer, 8)
    cached, recomputed = decode(model, prompts, True, stops), decode(model, prompts, False, stops)
    figures["fp32_identical"] = cached == recomputed
    figures["fp32_tokens"] = sum(map(len, cached))
    del model
    release()

    fresh_attention_env()
    model, _ = load_for_generation(ctx.converted, ctx.tp, "bf16")
    cached, recomputed = decode(model, prompts, True, stops), decode(model, prompts, False, stops)
    figures["bf16_rows_identical"] = sum(a == b for a, b in zip(cached, recomputed)) / len(prompts)
    decode(model, prompts[:1], True, [])  # warm-up: kernels, cuBLAS handles
    for batch in ctx.sizes.gen_batches:
        rows = (prompts * (1 + batch // len(prompts)))[:batch]
        synchronize()
        start = time.perf_counter()
        out = decode(model, rows, True, [], batch)  # no stop ids: every row runs to the end
        synchronize()
        figures[f"tokens_per_s_batch{batch}"] = sum(map(len, out)) / (time.perf_counter() - start)
    del model
    release()
    speed = ", ".join(
        f"batch {b}: {figures[f'tokens_per_s_batch{b}']:.0f} tok/s" for b in ctx.sizes.gen_batches
    )
    return verdict(
        "generation",
        figures["fp32_identical"] and figures["fp32_tokens"] > 0,
        figures,
        f"greedy KV cache == recompute: {figures['fp32_identical']} (fp32, "
        f"{figures['fp32_tokens']} tokens; bf16 rows identical "
        f"{figures['bf16_rows_identical']:.0%}); {speed}",
    )
