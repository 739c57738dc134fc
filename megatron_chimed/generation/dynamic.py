"""The dynamic engine: megatron-core's `DynamicInferenceEngine` (continuous batching over a
paged KV cache), the default engine of `generate` and of the RS stage.

Every answer is one request: a prompt's N samples go in as N requests, each with its own
prefill. megatron's prefix caching shares only complete KV blocks (256 tokens on a GPU): a
prompt shorter than that would share nothing, and a longer one saves part of a prefill, which
costs far less per token than decoding. So it stays off. The engine keeps up to
`max_requests` of them in flight and admits the next waiting one as soon as an answer ends
(at a stop token or its length limit), so a long answer no longer holds a whole batch back.
The KV cache is a pool of fixed-size blocks (kv_budget.py sizes it from free GPU memory, or
from a byte budget on CPU). With CUDA graphs (on by default on a GPU) the decode steps
replay captured graphs instead of launching each layer's kernels from Python.

Sampling is ours (sampling.py), not megatron's shared-generator sampler: an answer's tokens
depend on its key and the logits only, whichever answers it is batched with, so the engine
gives the static engine's tokens, greedy or sampled. Both stop ids (`</s>`, `<human>`) end a
request: a sampled stop id is handed to the engine as its one termination id.

The engine is built on first use and kept on the model (`model._chimed_dynamic`); a call that
needs longer sequences or other engine settings rebuilds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm import tqdm

from megatron_chimed.config.stages import GenerationConfig
from megatron_chimed.generation.decode import check_limits
from megatron_chimed.generation.kv_budget import EngineShape, engine_shape, release_memory
from megatron_chimed.generation.sampling import next_tokens, row_keys, true_vocab
from megatron_chimed.model import unwrap

log = logging.getLogger(__name__)

_CACHE_ATTR = "_chimed_dynamic"


class _NoText:
    """The tokenizer the engine is given: it detokenizes every finished request, and we
    decode the ids ourselves, so it returns no text (and costs nothing)."""

    def __init__(self, eod: int) -> None:
        self.eod = eod

    def detokenize(self, tokens: list[int], **kwargs) -> str:
        return ""


@dataclass
class _Call:
    """What the sampler needs to know about the call in flight."""

    cfg: GenerationConfig
    keys: torch.Tensor  # [rows] sampling key of request id first_id + row
    first_id: int  # request ids are unique over the engine's life: this call's first
    stops: torch.Tensor  # stop ids: any of them ends the answer
    termination: int  # the one id the engine checks


def _controller_class():
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )

    class KeyedSamplingController(TextGenerationController):
        """megatron's controller with sampling.py's keyed sampler in place of its own."""

        call: _Call | None = None
        tokenizer_vocab: int = 0  # the padded columns past it are never sampled

        def _dynamic_step_sample_logits(self) -> None:
            context = self.inference_wrapped_model.inference_context
            count = context.total_request_count - context.paused_request_count
            if count == 0:
                return
            call = self.call
            if call is None:  # not ours to sample (no such step outside `run` today)
                return super()._dynamic_step_sample_logits()
            device = self._sampled_tokens_cuda.device
            # Rows are the active requests in context order (only last-token logits exist).
            logits = true_vocab(self._all_logits_cuda.squeeze(0)[:count], self.tokenizer_vocab)
            keys = positions = None
            if not call.cfg.greedy:
                active = slice(context.paused_request_count, context.total_request_count)
                ids = context.request_ids[active].long().to(device, non_blocking=True)
                keys = call.keys[ids - call.first_id]
                # The new token's position: every token so far, this step's included.
                positions = context.get_active_sequence_lengths().to(device, non_blocking=True)
            sampled = next_tokens(logits, call.cfg, keys, positions)
            if call.stops.numel():
                stop = torch.isin(sampled, call.stops)
                sampled = torch.where(stop, torch.full_like(sampled, call.termination), sampled)
            self._sampled_tokens_cuda[:count].copy_(sampled)

    return KeyedSamplingController


class DynamicGenerator:
    """A DynamicInferenceEngine over one model shard, and how to run a list of prompts on it."""

    def __init__(self, model: torch.nn.Module, shape: EngineShape, vocab_size: int) -> None:
        from megatron.core.inference.config import InferenceConfig
        from megatron.core.inference.contexts.dynamic_context import DynamicInferenceContext
        from megatron.core.inference.engines.dynamic_engine import DynamicInferenceEngine
        from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import (
            GPTInferenceWrapper,
        )
        from megatron.core.inference.utils import InferenceMode

        from megatron_chimed.generation import cuda_graphs
        from megatron_chimed.platform import cpu_inference_compat

        cpu_inference_compat.apply()  # a no-op with CUDA
        self.shape = shape
        core = unwrap(model)
        if torch.cuda.is_available() and core.config.params_dtype == torch.float32:
            raise ValueError(
                "generation.engine=dynamic on a GPU needs bf16 or fp16 weights (flash-attn's "
                "paged-KV kernels); load the model with precision bf16, or set "
                "generation.engine=static for fp32"
            )
        cuda_graphs.prepare(core, shape.cuda_graphs)
        inference = InferenceConfig(
            block_size_tokens=shape.block_tokens,
            buffer_size_gb=shape.kv_bytes / 1024**3,
            max_sequence_length=shape.max_sequence_length,
            max_requests=shape.max_requests,
            max_tokens=shape.max_tokens,
            num_cuda_graphs=shape.num_cuda_graphs,
            use_cuda_graphs_for_non_decode_steps=False,
            materialize_only_last_token_logits=True,
        )
        self.context = DynamicInferenceContext(core.config, inference)
        wrapper = GPTInferenceWrapper(model, self.context)
        self.controller = _controller_class()(wrapper, _NoText(-1))
        self.controller.tokenizer_vocab = vocab_size
        self.engine = DynamicInferenceEngine(self.controller, self.context)
        # The engine leaves megatron's process-wide "an engine uses the model" flag set; the
        # same process may train next (RS) or run the static engine, so it is set only while
        # `run` steps the engine.
        InferenceMode.unset_active()
        self.next_id = 0
        log.info(
            "dynamic engine: %d KV blocks of %d tokens (%.2f GiB), up to %d requests in flight, "
            "CUDA graphs %s",
            self.context.kv_block_allocator.total_count,
            shape.block_tokens,
            shape.kv_bytes / 1024**3,
            self.context.max_requests,
            "on" if shape.cuda_graphs else "off",
        )

    @property
    def max_requests(self) -> int:
        return self.context.max_requests

    @torch.no_grad()
    def run(
        self,
        prompts: list[list[int]],
        cfg: GenerationConfig,
        stop_ids: list[int],
        limits: list[int],
        progress: bool = False,
    ) -> list[list[int]]:
        """New token ids of every prompt, in input order; request i is sampled with key
        (cfg.seed, i), as row i of the static engine."""
        from megatron.core.inference.sampling_params import SamplingParams
        from megatron.core.inference.utils import InferenceMode

        device = self.controller._sampled_tokens_cuda.device
        termination = stop_ids[0] if stop_ids else -1
        first = self.next_id
        self.next_id += len(prompts)
        self.controller.call = _Call(
            cfg=cfg,
            keys=row_keys(cfg.seed, torch.arange(len(prompts), device=device)),
            first_id=first,
            stops=torch.tensor(stop_ids, dtype=torch.long, device=device),
            termination=termination,
        )
        self.controller.tokenizer.eod = termination
        for row, (prompt, limit) in enumerate(zip(prompts, limits)):
            params = SamplingParams(
                num_tokens_to_generate=limit, termination_id=termination, top_k=1
            )
            self.engine.add_request(first + row, prompt, params)
        out: list[list[int]] = [[] for _ in prompts]
        bar = tqdm(total=len(prompts), desc="generate", unit="answer", disable=not progress)
        with InferenceMode.active(), bar:
            while self.engine.has_unfinished_requests():
                result = self.engine.step_modern()
                for record in result["finished_request_records"]:
                    request = record.merge()
                    tokens = list(request.generated_tokens)
                    if tokens and tokens[-1] == termination:  # the stop is not in the answer
                        tokens.pop()
                    out[request.request_id - first] = tokens
                    bar.update(1)
        self.controller.call = None
        return out


def dynamic_generator(
    model: torch.nn.Module, cfg: GenerationConfig, vocab_size: int, sequence_length: int
) -> DynamicGenerator:
    """The engine kept on `model`, rebuilt (the old one freed first) when this call needs
    longer sequences or other engine settings than it was built for."""
    cached: DynamicGenerator | None = getattr(model, _CACHE_ATTR, None)
    if cached is not None and cached.shape.serves(cfg, sequence_length):
        return cached
    close(model)  # free its KV pool (and graphs) before measuring the memory for the next one
    built = DynamicGenerator(model, engine_shape(model, cfg, sequence_length), vocab_size)
    object.__setattr__(model, _CACHE_ATTR, built)  # not a submodule: no state_dict entry
    return built


def close(model: torch.nn.Module) -> None:
    """Drop the engine kept on `model` and free its KV pool. With CUDA graphs, megatron keeps
    every captured graph in a process-wide record that holds the layers and the pool: they go
    too (cuda_graphs.remove), or the next phase's model (RS: the reward model) would not fit."""
    cached: DynamicGenerator | None = getattr(model, _CACHE_ATTR, None)
    if cached is None:
        return
    object.__setattr__(model, _CACHE_ATTR, None)
    if cached.shape.cuda_graphs:
        from megatron_chimed.generation import cuda_graphs

        cuda_graphs.remove(unwrap(model))
    del cached
    release_memory()


def generate_ids(
    model: torch.nn.Module,
    prompts: list[list[int]],
    cfg: GenerationConfig,
    vocab_size: int,
    stop_ids: list[int],
    progress: bool = False,
    limits: list[int] | None = None,
) -> list[list[int]]:
    """New token ids for every prompt row, in input order, through the dynamic engine: the
    same contract (and, greedy or sampled, the same tokens) as decode.generate_ids."""
    cfg.validate()
    limits = check_limits(limits, len(prompts), cfg.max_new_tokens)
    if not prompts:
        return []
    if min(map(len, prompts)) == 0:
        raise ValueError("generation: a prompt encodes to no tokens")
    longest = max(len(p) + n for p, n in zip(prompts, limits))
    limit = unwrap(model).max_sequence_length
    if longest > limit:
        raise ValueError(
            f"generation: a prompt of {max(map(len, prompts))} tokens + max_new_tokens="
            f"{cfg.max_new_tokens} exceeds the model's max_position_embeddings={limit}"
        )
    model.eval()
    generator = dynamic_generator(model, cfg, vocab_size, longest)
    return generator.run(prompts, cfg, stop_ids, limits, progress)
