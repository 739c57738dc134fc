"""checkpoint/safe_load.py: a crafted pickle in a checkpoint's index or in one of its non-tensor
items is refused before it runs (its payload would create a file), while plain data loads.
tests/training/test_checkpointing_integrity.py does the same through a real resume."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from megatron_chimed.checkpoint import CheckpointError, safe_load


class Payload:
    """Unpickling it creates `path`: what a crafted checkpoint item could do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_index_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": Payload(marker)}))
    with pytest.raises(CheckpointError) as err:
        safe_load.read_index(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / '.metadata'}: refused to unpickle: _io.open is not checkpoint metadata"
    )
    assert not marker.exists()


def test_a_truncated_index_names_the_file(tmp_path: Path) -> None:
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"a": 1})[:5])
    with pytest.raises(CheckpointError, match=r"\.metadata: unreadable \("):
        safe_load.read_index(tmp_path)


def _load_bytes(planner, data: bytes) -> None:
    item = SimpleNamespace(dest_index=SimpleNamespace(fqn="rng_state/shard_0_1"))
    planner.load_bytes(item, io.BytesIO(data))


def test_non_tensor_items_load_weights_only(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    marker = tmp_path / "ran"
    crafted = io.BytesIO()
    torch.save([Payload(marker)], crafted)
    planner = DefaultLoadPlanner(flatten_state_dict=False)
    planner.state_dict = {}
    with pytest.raises(CheckpointError) as err:
        with safe_load.no_pickled_code(tmp_path):
            _load_bytes(planner, crafted.getvalue())
    assert str(err.value) == (
        f"{tmp_path}: refused to unpickle rng_state/shard_0_1: it would call _io.open, "
        "which checkpoint data never needs"
    )
    assert not marker.exists()
    plain = io.BytesIO()
    torch.save([{"param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95)}], "t": torch.ones(2)}], plain)
    with safe_load.no_pickled_code(tmp_path):
        _load_bytes(planner, plain.getvalue())
    assert planner.state_dict["rng_state/shard_0_1"][0]["param_groups"][0]["betas"] == (0.9, 0.95)
    # Outside the context DCP's planner is its own again.
    module = DefaultLoadPlanner.load_bytes.__module__
    assert module == "torch.distributed.checkpoint.default_planner"


def test_shards_shorter_than_the_index_says_name_the_file(tmp_path: Path) -> None:
    info = SimpleNamespace
    index = SimpleNamespace(storage_data={
        1: info(relative_path="__0_0.distcp", offset=0, length=100),
        2: info(relative_path="__0_0.distcp", offset=100, length=50),
        3: info(relative_path="__1_0.distcp", offset=0, length=10),
    })  # fmt: skip
    (tmp_path / "__0_0.distcp").write_bytes(b"x" * 150)
    (tmp_path / "__1_0.distcp").write_bytes(b"x" * 10)
    safe_load.check_files(tmp_path, index)
    (tmp_path / "__0_0.distcp").write_bytes(b"x" * 120)
    with pytest.raises(CheckpointError) as err:
        safe_load.check_files(tmp_path, index)
    shard = tmp_path / "__0_0.distcp"
    assert str(err.value) == f"{shard}: 120 bytes, its .metadata needs 150: truncated"
    (tmp_path / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=r"__0_0\.distcp: missing \(named by \.metadata\)"):
        safe_load.check_files(tmp_path, index)


def test_fp8_extra_state_is_refused(tmp_path: Path) -> None:
    none = torch.frombuffer(bytearray(pickle.dumps(None)), dtype=torch.uint8)  # TE 2.x, no FP8
    safe_load.check_extra_state(tmp_path, {"decoder.linear._extra_state": None,
                                           "decoder.fc._extra_state": torch.empty(0),
                                           "decoder.proj._extra_state": none})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"decoder\.fc\._extra_state holds FP8 state"):
        safe_load.check_extra_state(tmp_path, {"decoder.fc._extra_state": torch.ones(8)})
