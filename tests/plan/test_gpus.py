"""The GPU table and the choice of link for the data-parallel ring."""

from __future__ import annotations

import pytest

from megatron_chimed.plan.gpus import GIB, GPUS, gpu, link_gb_s


def test_table_figures() -> None:
    figures = {
        name: (round(g.memory_bytes / GIB, 1), g.peak_bf16_tflops) for name, g in GPUS.items()
    }
    assert figures == {
        "a100-40g": (40.0, 312.0),
        "a100-80g": (80.0, 312.0),
        "h100-80g": (79.6, 989.0),
        "h200": (140.4, 989.0),
    }


def test_auto_link_is_nvlink_in_a_node_and_the_fabric_across() -> None:
    assert link_gb_s(GPUS["h100-80g"], "auto", spans_nodes=False) == ("nvlink", 450.0)
    assert link_gb_s(GPUS["h100-80g"], "auto", spans_nodes=True) == ("ib-ndr", 50.0)
    assert link_gb_s(GPUS["a100-80g"], "auto", spans_nodes=True) == ("ib-hdr", 25.0)
    assert link_gb_s(GPUS["a100-80g"], "nvlink", spans_nodes=True) == ("nvlink", 300.0)
    assert link_gb_s(GPUS["h200"], "eth-100g", spans_nodes=True) == ("eth-100g", 12.5)


def test_unknown_names_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"^--gpu 'v100': expected one of a100-40g, "):
        gpu("v100")
    with pytest.raises(ValueError, match=r"^--interconnect 'ib'"):
        link_gb_s(GPUS["h200"], "ib", spans_nodes=True)
