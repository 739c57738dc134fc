"""The patch-table convention (platform/patches.py) that both CPU layers use."""

from __future__ import annotations

import types

import pytest
import torch

from megatron_chimed.platform.patches import Patch, apply_patches


def test_a_target_is_a_module_or_a_class_inside_one() -> None:
    assert Patch("torch.Tensor", "pin_memory", None, "s", "c").target() is torch.Tensor
    assert Patch("torch.nn", "Linear", None, "s", "c").target() is torch.nn
    with pytest.raises(AttributeError, match="no_such"):  # not a module, nor a name in one
        Patch("megatron_chimed.no_such", "x", None, "s", "c").target()


def test_apply_sets_every_row_but_the_one_left_out_and_keeps_the_originals(monkeypatch) -> None:
    module = types.ModuleType("patch_target_for_test")
    module.a, module.b = "original a", "original b"
    monkeypatch.setitem(__import__("sys").modules, module.__name__, module)
    rows = (
        Patch(module.__name__, "a", "new a", "site a", "canary a"),
        Patch(module.__name__, "b", "new b", "site b", "canary b"),
    )
    originals: dict = {}
    apply_patches(rows, originals, without=f"{module.__name__}.b")
    assert (module.a, module.b) == ("new a", "original b")
    assert originals == {f"{module.__name__}.a": "original a"}
