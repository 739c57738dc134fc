"""A run that starts from a checkpoint builds the checkpoint's model: config-level, on folders
holding only the checkpoint's chimed.json and `latest` (all that config loading reads)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from megatron_chimed.config import ConfigError, load
from megatron_chimed.config.schema import ModelConfig

# Another shape than conf/model/tiny.yaml (64 hidden, 2 layers, 4 heads, FFN 176).
CONVERTED = ModelConfig(
    name="mine",
    hidden_size=96,
    num_layers=3,
    num_attention_heads=6,
    num_query_groups=6,
    ffn_hidden_size=256,
    vocab_size=2000,
    max_position_embeddings=1024,
)


def fake_checkpoint(root: Path, model: ModelConfig, iteration: int = 0) -> Path:
    """ROOT/iter_N/chimed.json and ROOT/latest, as the converter and the loop write them."""
    folder = root / f"iter_{iteration:07d}"
    folder.mkdir(parents=True)
    metadata = {"kind": "converted", "iteration": iteration, "model": dataclasses.asdict(model)}
    (folder / "chimed.json").write_text(json.dumps(metadata))
    (root / "latest").write_text(folder.name + "\n")
    return root


@pytest.fixture
def ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CHIMED_CONFIG_PATH", raising=False)  # the package's default group
    return fake_checkpoint(tmp_path / "ckpt", CONVERTED)


def start(tmp_path: Path, ckpt: Path, *overrides: str):
    return load(["stage=cpt", f"checkpoint.load={ckpt}", f"run_dir={tmp_path / 'run'}", *overrides])


def test_checkpoint_load_without_model_builds_the_checkpoint_s_shape(
    tmp_path: Path, ckpt: Path
) -> None:
    model = start(tmp_path, ckpt).model
    assert model == CONVERTED  # every field, not the default group's tiny


def test_a_resume_takes_the_run_s_own_checkpoint_over_checkpoint_load(
    tmp_path: Path, ckpt: Path
) -> None:
    trained = dataclasses.replace(CONVERTED, hidden_size=120, num_layers=4, name="trained")
    fake_checkpoint(tmp_path / "run" / "checkpoints", trained, iteration=50)
    model = start(tmp_path, ckpt).model
    assert (model.name, model.hidden_size, model.num_layers) == ("trained", 120, 4)


@pytest.mark.parametrize(
    ("overrides", "conflicts"),
    [
        # the default group named explicitly: every shape field it sets that differs
        (
            ["model=tiny"],
            [
                "model.hidden_size: checkpoint 96, config 64",
                "model.num_layers: checkpoint 3, config 2",
                "model.num_attention_heads: checkpoint 6, config 4",
                "model.num_query_groups: checkpoint 6, config 4",
                "model.ffn_hidden_size: checkpoint 256, config 176",
            ],
        ),
        (["model.hidden_size=64"], ["model.hidden_size: checkpoint 96, config 64"]),
        # a group an experiment selects is the user's choice too
        (
            ["experiment=chimed_paper_cpt"],
            [
                "model.hidden_size: checkpoint 96, config 5120",
                "model.num_layers: checkpoint 3, config 40",
                "model.num_attention_heads: checkpoint 6, config 40",
                "model.num_query_groups: checkpoint 6, config 40",
                "model.ffn_hidden_size: checkpoint 256, config 13824",
                "model.vocab_size: checkpoint 2000, config 39410",
            ],
        ),
    ],
)
def test_a_model_that_disagrees_on_shape_is_an_error_naming_both_values(
    tmp_path: Path, ckpt: Path, overrides: list[str], conflicts: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        start(tmp_path, ckpt, *overrides)
    message = str(err.value)
    assert message.startswith(f"checkpoint.load: {ckpt / 'iter_0000000' / 'chimed.json'}")
    assert "\n" not in message
    for conflict in conflicts:
        assert conflict in message
    assert message.count("model.") == len(conflicts) + 1  # + the advice's "model.* shape keys"


def test_the_user_keeps_non_shape_fields_and_may_repeat_the_shape(
    tmp_path: Path, ckpt: Path
) -> None:
    model = start(
        tmp_path,
        ckpt,
        "model.attention_backend=local",
        "model.transformer_impl=local",
        "model.max_position_embeddings=2048",
        "model.hidden_size=96",  # agrees with the checkpoint: no error
    ).model
    assert (model.attention_backend, model.transformer_impl) == ("local", "local")
    assert (model.max_position_embeddings, model.hidden_size, model.num_layers) == (2048, 96, 3)


def test_a_checkpoint_with_unknown_model_keys_is_named(tmp_path: Path, ckpt: Path) -> None:
    path = ckpt / "iter_0000000" / "chimed.json"
    metadata = json.loads(path.read_text())
    metadata["model"]["num_experts"] = 8
    path.write_text(json.dumps(metadata))
    with pytest.raises(ConfigError, match=r"chimed.json: field 'model' has unknown keys \['num_"):
        start(tmp_path, ckpt)
