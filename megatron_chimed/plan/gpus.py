"""The hardware `chimed plan` knows: GPU memory and peak dense bf16 throughput, and the links a
data-parallel group can reduce over. Every figure names where it comes from.

Memory is what `nvidia-smi` reports as the card's total (the datasheet's "40GB"/"80GB"/"141GB"
less what the driver reserves); the CUDA context, NCCL and cuBLAS take their share of it at run
time, which the planner's workspace allowance covers (plan/memory.py). Peak throughput is the
datasheet's dense bf16 tensor-core figure (NVIDIA prints twice that "with sparsity").
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int
    peak_bf16_tflops: float  # dense, per GPU
    nvlink_gb_s: float  # per GPU and direction: what a ring inside one node runs at
    infiniband: str  # the INTERCONNECTS key of the node's usual fabric (DGX reference design)
    source: str


GPUS: dict[str, Gpu] = {
    "a100-40g": Gpu(
        "A100-SXM4-40GB", 40960 * MIB, 312.0, 300.0, "ib-hdr",
        "NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 TFLOPS dense, 40GB HBM2, "
        "NVLink 600 GB/s bidirectional; nvidia-smi total 40960 MiB",
    ),
    "a100-80g": Gpu(
        "A100-SXM4-80GB", 81920 * MIB, 312.0, 300.0, "ib-hdr",
        "NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 TFLOPS dense, 80GB HBM2e, "
        "NVLink 600 GB/s bidirectional; nvidia-smi total 81920 MiB",
    ),
    "h100-80g": Gpu(
        "H100-SXM5-80GB", 81559 * MIB, 989.0, 450.0, "ib-ndr",
        "NVIDIA H100 Tensor Core GPU datasheet (2023): BF16 1979 TFLOPS with sparsity = 989 "
        "dense, 80GB HBM3, NVLink 900 GB/s bidirectional; nvidia-smi total 81559 MiB",
    ),
    "h200": Gpu(
        "H200-SXM-141GB", 143771 * MIB, 989.0, 450.0, "ib-ndr",
        "NVIDIA H200 Tensor Core GPU datasheet (2024): BF16 1979 TFLOPS with sparsity = 989 "
        "dense (the H100's tensor cores), 141GB HBM3e, NVLink 900 GB/s bidirectional; "
        "nvidia-smi total 143771 MiB",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Interconnect:
    name: str
    gb_s: float  # per GPU and direction (0: the GPU's own NVLink figure)
    source: str


INTERCONNECTS: dict[str, Interconnect] = {
    "nvlink": Interconnect(
        "NVLink inside one node", 0.0, "the GPU's NVLink bandwidth (GPUS table)"
    ),
    "ib-ndr": Interconnect(
        "InfiniBand NDR 400 Gb/s per GPU", 50.0,
        "DGX H100 reference design: one ConnectX-7 400 Gb/s NIC per GPU",
    ),
    "ib-hdr": Interconnect(
        "InfiniBand HDR 200 Gb/s per GPU", 25.0,
        "DGX A100 reference design: one ConnectX-6 200 Gb/s NIC per GPU",
    ),
    "eth-100g": Interconnect(
        "100 GbE (RoCE) per GPU", 12.5, "one 100 Gb/s Ethernet port per GPU",
    ),
}  # fmt: skip


def gpu(name: str) -> Gpu:
    """The GPUS entry, or a ValueError naming the choices."""
    if name not in GPUS:
        raise ValueError(f"--gpu {name!r}: expected one of {', '.join(GPUS)}")
    return GPUS[name]


def link_gb_s(device: Gpu, interconnect: str, spans_nodes: bool) -> tuple[str, float]:
    """(which link, GB/s per GPU) a data-parallel ring runs at. `auto`: NVLink when the whole
    DP group sits in one node, else the node's usual fabric (DGX reference designs above)."""
    if interconnect == "auto":
        interconnect = device.infiniband if spans_nodes else "nvlink"
    if interconnect not in INTERCONNECTS:
        raise ValueError(
            f"--interconnect {interconnect!r}: expected auto or one of {', '.join(INTERCONNECTS)}"
        )
    link = INTERCONNECTS[interconnect]
    return interconnect, link.gb_s or device.nvlink_gb_s
