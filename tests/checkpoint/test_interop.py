"""Our checkpoints carry what Megatron-LM and Megatron-Bridge read: the tracker, `args` in the
common state (common.pt) and run_config.yaml, with the model's own values; chimed.json says
which megatron-core and format wrote them."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from megatron_chimed.checkpoint import interop, layout
from megatron_chimed.convert import hf_to_megatron
from megatron_chimed.testing.tiny_ziya import TINY

# Every field Megatron-LM's load_args_from_checkpoint reads (megatron/training/checkpointing.py,
# core_v0.19.0: its _set_arg calls), then those its load_checkpoint / check_checkpoint_args
# read, then those Bridge 0.6's _transformer_config_from_args reads without a default.
LOAD_ARGS_FIELDS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "seq_length", "num_attention_heads",
    "num_query_groups", "group_query_attention", "kv_channels", "max_position_embeddings",
    "position_embedding_type", "add_position_embedding", "use_rotary_position_embeddings",
    "rotary_base", "rotary_percent", "rotary_interleaved", "add_bias_linear", "add_qkv_bias",
    "squared_relu", "swiglu", "untie_embeddings_and_output_weights", "apply_layernorm_1p",
    "normalization", "apply_query_key_layer_scaling", "attention_dropout", "hidden_dropout",
    "mtp_hybrid_override_pattern", "mtp_num_layers", "mtp_use_repeated_layer", "spec",
    "num_experts", "moe_layer_freq", "moe_ffn_hidden_size", "moe_router_topk",
    "moe_token_dispatcher_type", "moe_router_pre_softmax", "moe_grouped_gemm",
    "moe_single_grouped_weight", "moe_single_grouped_bias",
    "moe_shared_expert_intermediate_size", "moe_router_score_function",
    "moe_router_enable_expert_bias", "moe_router_topk_scaling_factor", "mamba_state_dim",
    "mamba_head_dim", "mamba_num_groups", "mamba_num_heads", "hybrid_layer_pattern",
    "heterogeneous_layers_config_path", "heterogeneous_layers_config_encoded_json",
    "moe_latent_size", "tokenizer_model", "tokenizer_type", "tiktoken_pattern",
    "padded_vocab_size", "ckpt_format", "tensor_model_parallel_size",
    "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
    "num_layers_per_virtual_pipeline_stage", "expert_model_parallel_size",
)  # fmt: skip
LOAD_CHECKPOINT_FIELDS = (
    "make_vocab_size_divisible_by", "consumed_train_samples", "skipped_train_samples",
    "consumed_valid_samples", "async_save",
)  # fmt: skip
BRIDGE_FROM_ARGS_FIELDS = (
    "multi_latent_attention", "heterogeneous_layers_config_path", "no_persist_layer_norm",
    "params_dtype", "overlap_p2p_comm", "num_experts", "rotary_interleaved",
    "decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers", "fp8_param_gather",
    "swiglu", "bias_swiglu_fusion", "squared_relu", "init_method_xavier_uniform",
    "group_query_attention", "num_query_groups", "config_logger_dir", "cp_comm_type",
    "is_hybrid_model",
)  # fmt: skip


@pytest.fixture(scope="module")
def converted(tiny_ziya: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hf_to_megatron(tiny_ziya, tmp_path_factory.mktemp("ours") / "ckpt", progress=False)


def _common(ckpt_dir: Path) -> dict:
    import megatron.core  # noqa: F401  (registers argparse.Namespace, its enums as safe)

    return torch.load(ckpt_dir / "common.pt", weights_only=True)


def test_conversion_writes_megatron_lm_args_with_the_models_values(converted: Path) -> None:
    assert (converted / "latest_checkpointed_iteration.txt").read_text() == "0"
    common = _common(converted / "iter_0000000")
    assert (common["checkpoint_version"], common["iteration"]) == (3.0, 0)
    args = vars(common["args"])
    assert {k: args[k] for k in ("num_layers", "hidden_size", "ffn_hidden_size",
                                 "num_attention_heads", "num_query_groups", "kv_channels",
                                 "max_position_embeddings", "seq_length")} == {
        "num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 176, "num_attention_heads": 4,
        "num_query_groups": 4, "kv_channels": 16, "max_position_embeddings": 1024,
        "seq_length": 1024,
    }  # fmt: skip
    assert args["group_query_attention"] is False
    assert (args["vocab_size"], args["padded_vocab_size"]) == (2000, 2048)
    assert (args["normalization"], args["swiglu"], args["add_bias_linear"]) == ("RMSNorm", 1, 0)
    assert (args["position_embedding_type"], args["rotary_base"]) == ("rope", 10000)
    assert args["untie_embeddings_and_output_weights"] is True
    assert (args["bf16"], args["params_dtype"]) == (True, torch.bfloat16)
    assert (args["tensor_model_parallel_size"], args["ckpt_format"]) == (1, "torch_dist")
    assert args["tokenizer_model"] == str((converted / "tokenizer").resolve())


def test_args_have_every_field_megatron_lm_and_bridge_read(converted: Path) -> None:
    args = _common(converted / "iter_0000000")["args"]
    wanted = LOAD_ARGS_FIELDS + LOAD_CHECKPOINT_FIELDS + BRIDGE_FROM_ARGS_FIELDS
    assert [name for name in wanted if not hasattr(args, name)] == []


def test_conversion_writes_bridge_run_config_with_the_models_values(converted: Path) -> None:
    config = yaml.safe_load((converted / "iter_0000000" / "run_config.yaml").read_text())
    model = config["model"]
    assert model["_target_"] == "megatron.bridge.models.gpt_provider.GPTModelProvider"
    assert {k: model[k] for k in ("num_layers", "hidden_size", "ffn_hidden_size",
                                  "num_attention_heads", "num_query_groups", "kv_channels",
                                  "seq_length", "layernorm_epsilon", "rotary_base")} == {
        "num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 176, "num_attention_heads": 4,
        "num_query_groups": 4, "kv_channels": 16, "seq_length": 1024,
        "layernorm_epsilon": TINY.norm_epsilon, "rotary_base": 10000,
    }  # fmt: skip
    # The stored rows, unpadded by Bridge: it builds exactly the embedding we saved.
    assert (model["vocab_size"], model["should_pad_vocab"]) == (2048, False)
    assert (model["normalization"], model["gated_linear_unit"]) == ("RMSNorm", True)
    assert model["activation_func"] == {"_target_": "torch.nn.functional.silu", "_call_": False}
    assert model["share_embeddings_and_output_weights"] is False
    assert (model["add_bias_linear"], model["position_embedding_type"]) == (False, "rope")
    assert model["params_dtype"] == {"_target_": "torch.bfloat16", "_call_": False}
    assert config["tokenizer"]["tokenizer_type"] == "HuggingFaceTokenizer"
    assert config["checkpoint"]["ckpt_format"] == "torch_dist"


def test_chimed_json_records_megatron_core_version_and_format(converted: Path) -> None:
    metadata = layout.read_metadata(converted / "iter_0000000")
    assert metadata["checkpoint_format"] == "torch_dist"
    assert metadata["megatron_core_version"] == importlib.metadata.version("megatron-core")


class _Payload:
    """Unpickles as a call to os.system: a crafted common.pt."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_megatron_core_reads_the_args_in_common_pt_and_our_loader_never_does(
    converted: Path, tmp_path: Path
) -> None:
    from megatron.core import dist_checkpointing

    from megatron_chimed.checkpoint import safe_load

    ckpt = converted / "iter_0000000"
    # As Megatron-LM and Bridge (megatron-core 0.19) read it: common.pt before the files' own.
    assert dist_checkpointing.load_common_state_dict(str(ckpt))["args"].num_layers == 2
    # Ours reads the torch_dist files' common state (a conversion's is empty), weights-only:
    # a crafted common.pt is never unpickled.
    copy = shutil.copytree(ckpt, tmp_path / "iter_0000000")
    marker = tmp_path / "ran"
    torch.save({"args": _Payload(marker)}, copy / "common.pt")
    with safe_load.no_pickled_code(copy):
        assert dist_checkpointing.load_common_state_dict(str(copy)) == {}
    assert not marker.exists()


def test_a_reward_model_gets_no_megatron_lm_or_bridge_model(tmp_path: Path) -> None:
    metadata = {"architecture": "LlamaForSequenceClassification", "iteration": 3, "model": {}}
    written = interop.write(tmp_path, metadata)
    assert written["checkpoint_format"] == "torch_dist"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_training_starts_from_a_bridge_checkpoint_and_its_saves_carry_both_tools_metadata(
    converted: Path, tiny_ziya_json: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """checkpoint.load= a Bridge root (its tokenizer in iter_0000000/tokenizer/), one step;
    then a resume (which reads our common.pt) to step 2."""
    from megatron_chimed.testing.foreign_checkpoints import make_bridge_checkpoint
    from megatron_chimed.train import main

    bridge = make_bridge_checkpoint(converted, tiny_ziya_json, tmp_path / "bridge")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # sft_sample names files from here
    for name in ("CHIMED_SFT_DATA", "CHIMED_CACHE", "CHIMED_CONFIG_PATH", "RANK", "WORLD_SIZE",
                 "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "run"
    common = [
        "stage=sft", "data=sft_sample", "parallel=tp1", "training=tiny", "precision=fp32",
        f"checkpoint.load={bridge}", f"run_dir={run_dir}", "training.global_batch_size=2",
        "training.micro_batch_size=1", "training.eval_interval=0", "training.tensorboard=false",
        "training.seq_length=128",
    ]  # fmt: skip
    assert main([*common, "training.train_iters=1"]) == 0
    assert main([*common, "training.train_iters=2"]) == 0  # resumes from iteration 1
    root = run_dir / "checkpoints"
    assert (root / "latest_checkpointed_iteration.txt").read_text() == "2"
    ckpt = root / "iter_0000002"
    saved = layout.read_metadata(ckpt)
    assert saved["model"]["vocab_size"] == 2000  # Bridge's vocabulary, unpadded at TP=1
    args = _common(ckpt)["args"]
    assert (args.iteration, args.consumed_train_samples, args.seq_length) == (2, 4, 128)
    assert (args.vocab_size, args.padded_vocab_size, args.params_dtype) == (
        2000, 2000, torch.float32
    )  # fmt: skip
    model = yaml.safe_load((ckpt / "run_config.yaml").read_text())["model"]
    assert (model["num_layers"], model["hidden_size"], model["vocab_size"]) == (2, 64, 2000)
    assert (model["bf16"], model["fp16"]) == (False, False)
    manifest = (ckpt / "manifest.json").read_text()
    assert '"common.pt"' in manifest and '"run_config.yaml"' in manifest  # checksummed
