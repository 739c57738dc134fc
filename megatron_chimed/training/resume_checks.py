"""A resume continues the run its checkpoint came from: settings that would silently change it
are compared with the resolved config the checkpoint recorded (chimed.json `config`).

- `training.seq_length`, `training.global_batch_size`: the data position is counted in samples
  of this size and batch, so another value reads other samples: refused, naming both values.
- `seed`: the RNG streams come back from the checkpoint, but the data blend's order follows
  the seed: a warning; the run goes on and will not match an uninterrupted one.

To change them, start a new run_dir from the checkpoint's weights (`checkpoint.load`). A
checkpoint without a recorded config is not compared.

The LR schedule follows this run's config (training/optim.py `restore_schedule` says what
changed). megatron's distributed optimizer pairs its saved param groups with the current ones
by every identifier field, the schedule's `max_lr`/`min_lr`/`start_wd`/`end_wd` included, so
another `optim.lr` failed with a KeyError on a tuple: `adopt_param_groups` gives the saved groups
this run's values of those fields first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist

from megatron_chimed.checkpoint import CheckpointError, layout

log = logging.getLogger("megatron_chimed.train")

DATA = ("training.seq_length", "training.global_batch_size")
WARN = ("seed",)
# Param-group fields the LR / weight-decay schedule sets from the config.
SCHEDULE_FIELDS = ("max_lr", "min_lr", "start_wd", "end_wd")


def _get(node: Any, key: str) -> Any:
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    return node


def check(ckpt_dir: Path, metadata: dict[str, Any], cfg: Any) -> None:
    """Raise CheckpointError naming the key and both values for a setting `cfg` (the run's
    RunConfig as it trains) changes against `metadata` (the checkpoint's chimed.json)."""
    saved = metadata.get("config")
    if not isinstance(saved, dict):
        return
    where = ckpt_dir / layout.METADATA
    for key in DATA + WARN:
        old, new = _get(saved, key), _get(cfg, key)
        if old is None or old == new:
            continue
        if key in WARN:
            if not dist.is_initialized() or dist.get_rank() == 0:
                log.warning("%s=%s differs from %s in %s: the RNG state resumes from the "
                            "checkpoint, the data order follows the new seed",
                            key, new, old, where)  # fmt: skip
            continue
        raise CheckpointError(
            f"{key}={new} differs from {old} in {where}: the data position counts samples of "
            f"this shape; resume with {key}={old}, or start a new run_dir with "
            f"checkpoint.load={ckpt_dir} (weights only)"
        )


def _param_group_lists(node: Any) -> list[list[dict]]:
    if isinstance(node, dict):
        groups = node.get("param_groups")
        found = [groups] if isinstance(groups, list) else []
        return found + [g for k, v in node.items() if k != "param_groups"
                        for g in _param_group_lists(v)]  # fmt: skip
    if isinstance(node, list | tuple):
        return [g for v in node for g in _param_group_lists(v)]
    return []


def adopt_param_groups(loaded: Any, optimizer: Any) -> None:
    """Set SCHEDULE_FIELDS of the param groups in `loaded` (a loaded optimizer state dict) to
    those of `optimizer`'s group with the same other identifier fields."""
    from megatron.core.optimizer.optimizer import param_group_identifier_keys

    keys = [k for k in param_group_identifier_keys if k not in SCHEDULE_FIELDS]
    parts = getattr(optimizer, "chained_optimizers", [optimizer])
    current = {tuple(g.get(k) for k in keys): g for p in parts for g in p.param_groups}
    for groups in _param_group_lists(loaded):
        for group in groups:
            ours = current.get(tuple(group.get(k) for k in keys))
            if ours is not None:
                group.update({k: ours[k] for k in SCHEDULE_FIELDS if k in ours})
