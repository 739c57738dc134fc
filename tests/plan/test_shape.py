"""What a composed config means for one GPU: world, DP, batch, layer spec, RM answers."""

from __future__ import annotations

import pytest

from megatron_chimed.config import load
from megatron_chimed.plan.shape import run_shape, world_size


@pytest.mark.parametrize(
    "overrides,world",
    [
        (["experiment=chimed_paper_cpt"], 16),  # slurm: 2 nodes x 8 GPUs
        (["experiment=chimed_paper_cpt", "launcher.nodes=4"], 32),
        (["launcher=torchrun", "launcher.procs_per_node=4"], 4),  # one node
        (["parallel=tp2_cpu"], 2),  # local: one TP group in process (cli.py `_world_for`)
    ],
)
def test_world_size_follows_the_launcher(overrides: list[str], world: int) -> None:
    assert world_size(load(overrides)) == world


def test_paper_cpt_shape() -> None:
    shape = run_shape(load(["experiment=chimed_paper_cpt"]))
    assert (shape.tp, shape.dp, shape.world, shape.nodes) == (2, 8, 16, 2)
    assert (shape.micro_batch, shape.global_batch, shape.num_microbatches) == (1, 512, 64)
    assert (shape.vocab_padded, shape.act_bytes, shape.bucket_size) == (39424, 2, 40_000_000)
    assert (shape.impl, shape.sequence_parallel, shape.stores_scores) == (
        "transformer_engine", True, False
    )  # fmt: skip
    cpu = run_shape(load(["experiment=chimed_paper_cpt"]), gpu=False)
    assert (cpu.impl, cpu.stores_scores, cpu.fused_kernels, cpu.bucket_size) == (
        "local", True, False, None
    )  # fmt: skip


def test_rm_forwards_every_answer_of_a_prompt() -> None:
    cfg = load(["experiment=chimed_paper_rm"])
    assert (run_shape(cfg).micro_batch, run_shape(cfg).per_prompt) == (4, 4)
    assert run_shape(cfg, responses=6).global_batch == 8 * 6
    binary = run_shape(load(["experiment=chimed_paper_rm", "rm.pairing=binary"]))
    assert (binary.micro_batch, binary.value_head) == (2, True)  # best and worst only
    with pytest.raises(ValueError, match="--responses 1"):
        run_shape(cfg, responses=1)


def test_unsplittable_configs_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"training.global_batch_size=12 is not a multiple"):
        run_shape(load(["experiment=chimed_paper_cpt", "training.global_batch_size=12"]))
    with pytest.raises(ValueError, match=r"parallel.tensor_model_parallel_size=2$"):
        run_shape(
            load(["experiment=chimed_paper_cpt", "launcher.nodes=1", "launcher.gpus_per_node=3"])
        )
