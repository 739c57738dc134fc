"""The config tree composes and validates in every combination meant to work; the errors name
the key. Composition only: no model is built, no file is opened."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from megatron_chimed import stages
from megatron_chimed.config import CONF_DIR, ConfigError, compose, load
from megatron_chimed.config.eval import EVAL_TASKS, EvalSuiteConfig

LAUNCHERS = ("local", "torchrun", "slurm")
MODELS = ("tiny", "ziya_13b_v2")
PARALLEL = {"tp1": (1, False), "tp2": (2, True), "tp2_cpu": (2, False), "tp4": (4, True)}
# The paper's values per stage (sections 2.1-2.3): lr, weight decay, global batch (None: ours).
PAPER = {
    "cpt": (5e-5, 0.1, None),
    "sft": (2e-5, 0.1, 16),
    "rm": (5e-6, 0.1, 8),
    "rs": (1e-5, 0.1, 64),
}
# Where each paper data group reads (the placeholders the user fills in).
PAPER_ROOT = {
    "cpt": "data/cmd/",
    "sft": "/data/chimed-sft/",
    "rm": "/data/chimed-reward/",
    "rs": "/data/chimed-sft/",
}
DATA_ENV = (
    "CMD_DATA",
    "CHIMED_SFT_ROOT",
    "CHIMED_REWARD_ROOT",
    "CHIMED_SFT_DATA",
    "CHIMED_REWARD_DATA",
    "ZIYA_MEGATRON",
)
# Previous stages' outputs each stage starts from (rs: also the reward model it samples with).
PAPER_LOAD = {
    "cpt": "checkpoints/ziya_13b_v2",
    "sft": "runs/chimed_paper_cpt/checkpoints",
    "rm": "runs/chimed_paper_sft/checkpoints",
    "rs": "runs/chimed_paper_sft/checkpoints",
}
STAGES = ("cpt", "sft", "rm", "rs")
# The rs stage needs its reward model; the pipeline passes the rm step's output.
RS_REWARD = "rs.reward_checkpoint=runs/rm/checkpoints"


@pytest.fixture(autouse=True)
def _default_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*DATA_ENV, "CHIMED_CONFIG_PATH"):  # the configs' defaults, whatever this
        monkeypatch.delenv(name, raising=False)  # shell exports


def _data_files(data: dict) -> list[str]:
    """The files a data group reads: CPT blend prefixes, SFT/RS sources, RM splits."""
    if "blend" in data:
        return data["blend"][1::2]
    if "sources" in data:
        return [source["path"] for source in data["sources"]]
    return [data[split] for split in ("train", "valid", "test")]


def test_every_experiment_and_stage_is_tested() -> None:
    names = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
    assert names == {f"chimed_paper_{s}" for s in STAGES} | {"demo"}
    assert set(stages.STAGES) == set(STAGES)
    assert {p.stem for p in (CONF_DIR / "stage").glob("*.yaml")} == set(STAGES)


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("stage", STAGES)
def test_paper_experiment(stage: str, launcher: str) -> None:
    cfg = load([f"experiment=chimed_paper_{stage}", f"launcher={launcher}"])
    assert (cfg.stage, cfg.model.name, cfg.precision) == (stage, "ziya_13b_v2", "bf16")
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.training.seq_length) == (
        5120,
        40,
        4096,
    )
    tp = cfg.parallel
    assert (tp.tensor_model_parallel_size, tp.sequence_parallel, tp.use_distributed_optimizer) == (
        2,
        True,
        True,
    )
    assert cfg.launcher.kind == launcher and cfg.run_dir == f"runs/chimed_paper_{stage}"
    lr, decay, batch = PAPER[stage]
    assert (
        cfg.optim.lr,
        cfg.optim.weight_decay,
        cfg.optim.adam_beta1,
        cfg.optim.adam_beta2,
        cfg.optim.clip_grad,
    ) == (lr, decay, 0.9, 0.95, 1.0)
    if batch:
        assert cfg.training.global_batch_size == batch
    if stage == "rs":  # section 2.3: AdamW eps 1e-5, 400 iterations; sampled by the RM
        assert (cfg.optim.adam_eps, cfg.training.train_iters) == (1e-5, 400)
        assert cfg.rs.reward_checkpoint == "runs/chimed_paper_rm/checkpoints"
    files = _data_files(cfg.data)
    assert len(files) >= 2 and all(f.startswith(PAPER_ROOT[stage]) for f in files), files
    assert cfg.checkpoint.load == PAPER_LOAD[stage]


def test_paper_slurm_job_is_two_nodes_of_eight_gpus() -> None:
    cfg = load(["experiment=chimed_paper_cpt"])
    launcher = cfg.launcher
    assert (launcher.kind, launcher.nodes, launcher.nproc_per_node) == ("slurm", 2, 8)
    assert (launcher.time, launcher.signal_grace_s, launcher.requeue) == ("24:00:00", 300, True)


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("stage", STAGES)
def test_demo_experiment(stage: str, launcher: str) -> None:
    data = stages.STAGES[stage].demo_data
    cfg = load(
        [
            "experiment=demo",
            f"stage={stage}",
            f"data={data}",
            f"launcher={launcher}",
            *([RS_REWARD] if stage == "rs" else []),
        ]
    )
    assert (cfg.stage, cfg.model.name, cfg.model.hidden_size) == (stage, "tiny", 64)
    assert (cfg.parallel.tensor_model_parallel_size, cfg.parallel.sequence_parallel) == (2, False)
    # training=tiny comes after the stage: it shrinks the paper's 4096 tokens.
    assert (cfg.training.seq_length, cfg.training.train_iters) == (64, 50)
    assert cfg.launcher.kind == launcher and cfg.run_dir == "runs/demo"
    files = _data_files(cfg.data)
    assert files and all("sample" in f for f in files), files


def test_demo_default_launcher_runs_two_cpu_ranks() -> None:
    cfg = load(["experiment=demo", "stage=cpt"])
    assert (cfg.launcher.kind, cfg.launcher.nproc_per_node) == ("torchrun", 2)


@pytest.mark.parametrize("parallel", sorted(PARALLEL))
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stage", STAGES)
def test_stage_model_parallel(stage: str, model: str, parallel: str) -> None:
    cfg = load(
        [
            f"stage={stage}",
            f"model={model}",
            f"parallel={parallel}",
            *([RS_REWARD] if stage == "rs" else []),
        ]
    )
    assert (cfg.stage, cfg.model.name) == (stage, model)
    p = cfg.parallel
    assert (p.tensor_model_parallel_size, p.sequence_parallel) == PARALLEL[parallel]
    # Attention heads and the padded vocabulary split evenly across the TP ranks.
    assert cfg.model.num_attention_heads % p.tensor_model_parallel_size == 0


def _task_files() -> dict[str, dict]:
    """conf/eval/<task>.yaml as written (interpolations resolved), every file but the suite."""
    files = {}
    for path in sorted((CONF_DIR / "eval").glob("*.yaml")):
        if path.stem != "suite":
            files[path.stem] = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return files


def test_every_eval_group_validates_into_its_kind_s_dataclass() -> None:
    files = _task_files()
    assert sorted({f["task"] for f in files.values()}) == sorted(EVAL_TASKS)  # each kind used
    for name, written in files.items():
        task = load([f"+eval={name}"]).eval
        assert type(task) is EVAL_TASKS[written["task"]], name
        # every key of the file is a field of the dataclass and keeps its value
        assert {key: getattr(task, key) for key in written} == written, name
    suite = load(["+eval=suite"]).eval
    assert isinstance(suite, EvalSuiteConfig)
    assert (suite.name, suite.seeds, list(suite.tasks)) == ("suite", [0, 1, 2, 3, 4], [
        "ceval", "cmmlu", "medqa", "chimed_qa", "mc_dialogue", "ccks2019", "chimst", "cami",
        "mica"])  # fmt: skip
    for name, task in suite.tasks.items():
        assert task == load([f"+eval={name}"]).eval, name  # each keeps its own file's settings


def test_eval_keys_a_file_leaves_out_take_the_dataclass_defaults() -> None:
    task = load(["+eval=ceval", "~eval.shots", "~eval.mode", "~eval.max_new_tokens"]).eval
    assert (task.shots, task.mode, task.max_new_tokens, task.subject_names) == (
        5,
        "logprob",
        16,
        {},
    )
    bias = load(["+eval=cami", "~eval.max_new_tokens", "~eval.template"]).eval
    assert (bias.max_new_tokens, bias.template) == (32, "{prompt}")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # unknown keys, at any depth
        (["+seeed=1"], "'seeed'"),
        (["+model.hiden_size=64"], "'model.hiden_size'"),
        (["+launcher.gpu_per_node=8"], "'launcher.gpu_per_node'"),
        (["stage=cpt", "+data.blends=[1.0,x]"], "'data.blends'"),
        (["stage=sft", "+data.pack=concat"], "'data.pack'"),
        (["stage=rm", "+data.pairng=all"], "'data.pairng'"),
        (["+eval=ceval", "+eval.shot=3"], "'eval.shot'"),
        (["+eval=suite", "+eval.tasks.medqa.shot=3"], "'eval.tasks.medqa.shot'"),
        (["+eval=suite", "+eval.seed=3"], "'eval.seed'"),
        # wrong types
        (["model.hidden_size=big"], "'model.hidden_size'"),
        (["training=tiny", "training.train_iters=1.5"], "'training.train_iters'"),
        (["parallel.sequence_parallel=maybe"], "'parallel.sequence_parallel'"),
        (["stage=rm", "rm.margin=wide"], "'rm.margin'"),
        (["stage=sft", "data.seq_length=long"], "'data.seq_length'"),
        (["stage=cpt", "data.blend=notalist"], "'data.blend'"),
        # bad values
        (["precision=fp8"], "precision='fp8'"),
        (["launcher.kind=mpi"], "launcher.kind: 'mpi'"),
        (["launcher.nodes=2"], "launcher.nodes=2 needs launcher=slurm"),
        (
            ["launcher=slurm", "launcher.time=10:00", "launcher.signal_grace_s=900"],
            "launcher.signal_grace_s=900",
        ),
        (["stage=rm", "rm.pairing=best"], "rm.pairing='best'"),
        (["stage=rs"], "rs.reward_checkpoint=''"),  # conf/stage/rs.yaml leaves it to the user
        (["+eval=ceval", "eval.task=essay"], "'eval.task': 'essay'"),
        # eval tasks: each typed as its kind's dataclass (config/eval.py)
        (["+eval=suite", "eval.tasks.ceval.mode=gen"], "'eval.tasks.ceval.mode': 'gen'"),
        (["+eval=suite", "eval.tasks.ceval.shots=many"], "'eval.tasks.ceval.shots'"),
        (["+eval=suite", "eval.tasks.chimst.limit=all"], "'eval.tasks.chimst.limit'"),
        (["+eval=suite", "eval.tasks.mc_dialogue.turns=first"], "'eval.tasks.mc_dialogue.turns'"),
        (["+eval=suite", "~eval.tasks.cami.scale_file"], "'eval.tasks.cami.scale_file'"),
        (["+eval=mica", "+eval.shots=5"], "'eval.shots': Key 'shots' not in 'BiasConfig'"),
        # one sequence length: training.seq_length
        (
            ["stage=sft", "+data.seq_length=128"],
            "data.seq_length=128 and training.seq_length=4096 differ",
        ),
    ],
)
def test_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(overrides)
    assert message in str(err.value)


def test_sft_data_takes_the_training_sequence_length() -> None:
    # The data groups set none: nothing for training=tiny's 64 to silently replace.
    for data in ("sft_sample", "sft_paper"):
        assert "seq_length" not in load(["stage=sft", f"data={data}"]).data
    cfg = load(["stage=sft", "data=sft_sample", "training=tiny", "+data.seq_length=64"])
    assert (cfg.training.seq_length, cfg.data["seq_length"]) == (64, 64)  # agreeing is fine


# A user's own config folder, as README's example.
MINE_MODEL = """name: mine
hidden_size: 96
num_layers: 3
num_attention_heads: 6
num_query_groups: 6
ffn_hidden_size: 256
vocab_size: 2000
max_position_embeddings: 512
"""
MINE_DATA = """template: ziya
packing: isolated
sources:
  - {name: notes, reader: chimed, path: /data/mine/notes.jsonl}
"""


def user_conf(root: Path) -> Path:
    for group, text in (("model", MINE_MODEL), ("data", MINE_DATA)):
        (root / group).mkdir(parents=True)
        (root / group / "mine.yaml").write_text(text)
    return root


def test_a_config_dir_adds_the_user_s_model_and_data(tmp_path: Path) -> None:
    conf = user_conf(tmp_path / "conf")
    for flag in (["--config-dir", str(conf)], [f"--config-dir={conf}"]):
        cfg = load([*flag, "stage=sft", "model=mine", "data=mine"])
        model = cfg.model
        assert (model.name, model.hidden_size, model.num_layers, model.ffn_hidden_size) == (
            "mine",
            96,
            3,
            256,
        )
        assert cfg.data["sources"] == [
            {"name": "notes", "reader": "chimed", "path": "/data/mine/notes.jsonl"}
        ]
        assert (cfg.stage, cfg.optim.lr) == ("sft", 2e-5)  # the package's groups still apply


def test_config_path_folders_are_searched_before_the_package_conf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = user_conf(tmp_path / "first")
    (first / "model" / "tiny.yaml").write_text(MINE_MODEL.replace("mine", "my_tiny"))
    second = tmp_path / "second"
    (second / "data").mkdir(parents=True)
    (second / "data" / "other.yaml").write_text(MINE_DATA.replace("notes", "other"))
    monkeypatch.setenv("CHIMED_CONFIG_PATH", f"{first}:{second}:")
    cfg = load(["stage=sft", "data=other"])
    assert (cfg.model.name, cfg.model.hidden_size) == ("my_tiny", 96)  # theirs, not ours
    assert cfg.data["sources"][0]["name"] == "other"
    assert load(["model=ziya_13b_v2"]).model.hidden_size == 5120  # ours where they have none


def test_an_unknown_option_lists_the_user_s_folder(tmp_path: Path) -> None:
    conf = user_conf(tmp_path / "conf")
    with pytest.raises(ConfigError) as err:
        load(["--config-dir", str(conf), "model=nope"])
    message = str(err.value)
    assert "Could not find 'model/nope'" in message
    assert f"file://{conf}" in message and f"file://{CONF_DIR}" in message
    assert message.index(f"file://{conf}") < message.index(f"file://{CONF_DIR}")
    assert "mine tiny ziya_13b_v2" in message  # the options, the user's included


def test_a_missing_config_folder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=f"--config-dir: config folder {tmp_path}/x does not"):
        load(["--config-dir", str(tmp_path / "x")])
    monkeypatch.setenv("CHIMED_CONFIG_PATH", str(tmp_path / "y"))
    with pytest.raises(ConfigError, match=f"CHIMED_CONFIG_PATH: config folder {tmp_path}/y does"):
        load([])


def test_submit_checks_the_trainer_config_before_queueing(tmp_path: Path) -> None:
    from megatron_chimed.launch import compose_launcher

    overrides = ["experiment=chimed_paper_cpt", "+optim.l_r=1", f"run_dir={tmp_path}"]
    launcher, run_dir = compose_launcher(overrides)  # another module's keys are its own
    assert (launcher.kind, run_dir) == ("slurm", str(tmp_path))
    with pytest.raises(ConfigError, match="'optim.l_r'"):
        compose_launcher(overrides, check_all=True)


def test_bundled_data_paths_do_not_depend_on_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conf/ names the bundled sample data by `${pkg:...}`: absolute, found from any folder."""
    from megatron_chimed.config.load import PACKAGE_DIR

    monkeypatch.chdir(tmp_path)
    for var in ("CHIMED_EVAL_DATA", "CHIMED_SFT_DATA", "CHIMED_REWARD_DATA"):
        monkeypatch.delenv(var, raising=False)
    suite = compose(["+eval=suite"]).eval
    data_dir = Path(suite.tasks.ceval.data_dir)
    assert data_dir == PACKAGE_DIR / "sample_data" / "eval" / "ceval" and data_dir.is_dir()
    sft = compose(["stage=sft", "data=sft_sample"]).data
    assert all(Path(s.path).is_file() for s in sft.sources), [s.path for s in sft.sources]
