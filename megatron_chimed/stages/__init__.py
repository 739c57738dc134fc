"""Every stage in one table: what it runs, what its `data` group is, what it starts from.

A stage is selected by `stage=<name>` (conf/stage/<name>.yaml sets its hyper-parameters). Its
implementation is either a `training.stage.Stage` subclass, which the one training loop runs
(`loop=True`), or an orchestrator function `run(cfg, tokenizer_dir) -> status` that runs the
loop itself among other work (rejection sampling: generate, score, select, then fine-tune).

A new stage (DPO, say) is a row here, a module beside these, and a conf/stage/<name>.yaml.
The table holds import paths, not objects: reading it (the config validation on a login node)
imports no stage and no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageSpec:
    implementation: str  # "module:attr": a Stage subclass, or an orchestrator function
    data_schema: str  # "module:Class" the stage's `data` group is validated against
    starts_from: str  # the pipeline step whose checkpoint it loads (weights only)
    demo_data: str  # the conf/data group the offline demo (`chimed pipeline`) uses
    loop: bool = True  # False: an orchestrator, called as implementation(cfg, tokenizer_dir)
    section: str | None = None  # its own RunConfig section (config/stages.py), if it has one


STAGES: dict[str, StageSpec] = {
    "cpt": StageSpec(
        "megatron_chimed.stages.cpt:PretrainStage",
        "megatron_chimed.data.pretrain:PretrainDataConfig",
        starts_from="convert",
        demo_data="sample",
    ),
    "sft": StageSpec(
        "megatron_chimed.stages.sft:SFTStage",
        "megatron_chimed.data.sft.config:SFTDataConfig",
        starts_from="cpt",
        demo_data="sft_sample",
    ),
    "rm": StageSpec(
        "megatron_chimed.stages.rm:RewardStage",
        "megatron_chimed.reward.data:RewardDataConfig",
        starts_from="sft",
        demo_data="reward_sample",
        section="rm",
    ),
    "rs": StageSpec(
        "megatron_chimed.stages.rs:run",
        "megatron_chimed.data.sft.config:SFTDataConfig",  # where the prompts come from
        starts_from="sft",
        demo_data="sft_sample",
        loop=False,
        section="rs",
    ),
}


def stage_spec(name: str | None) -> StageSpec:
    if name not in STAGES:
        raise ValueError(f"stage={name!r}: expected one of {sorted(STAGES)}")
    return STAGES[name]


def import_object(path: str) -> Any:
    """The object a "module:attr" path names (imported now)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
