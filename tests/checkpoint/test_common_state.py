"""Megatron-LM's args read from a common state without running anything stored in it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from megatron_chimed.checkpoint import CheckpointError, common_state


class _Payload:
    """Unpickles as a call to os.system: what a crafted checkpoint would hide in its args."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_namespace_dtype_and_enum_read_without_importing_or_calling(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    args = argparse.Namespace(
        num_layers=40, params_dtype=torch.bfloat16, cp_comm_type=["p2p"], evil=_Payload(marker)
    )
    torch.save({"args": args, "iteration": 7}, tmp_path / "common.pt")
    state, where = common_state.read(tmp_path)
    assert where == str(tmp_path / "common.pt")
    assert state["iteration"] == 7
    read = state["args"]
    assert isinstance(read, argparse.Namespace)
    assert (read.num_layers, read.cp_comm_type) == (40, ["p2p"])
    assert common_state.opaque_name(read.params_dtype) == "torch.bfloat16"
    # The call is recorded, never made.
    assert common_state.opaque_name(read.evil) in ("posix.system", "nt.system")
    assert read.evil.args == (f"touch {marker}",)
    assert not marker.exists()


def test_a_file_that_is_no_torch_save_archive_is_named(tmp_path: Path) -> None:
    (tmp_path / "common.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"common\.pt: not a torch\.save archive"):
        common_state.read(tmp_path)


def test_a_folder_without_common_state_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"\.metadata: missing; not a torch_dist"):
        common_state.read(tmp_path)
