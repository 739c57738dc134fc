"""megatron-chimed: the open training framework behind ChiMed-GPT, on Megatron-core."""

from setuptools import find_packages, setup

setup(
    name="megatron-chimed",
    version="0.1.0",
    description="Continued pre-training, SFT, reward modelling and rejection sampling for "
    "ChiMed-GPT (Ziya-13B-v2, LLaMA) on Megatron-core",
    python_requires=">=3.12",
    packages=find_packages(include=["megatron_chimed", "megatron_chimed.*"]),
    package_data={"megatron_chimed": ["sample_data/**/*", "sample_data/*"]},
    include_package_data=True,
    install_requires=[
        "megatron-core==0.19.*",
        "torch>=2.9",  # torchrun's PET_SIGNALS_TO_HANDLE: the launcher relays TERM/INT itself
        "transformers",
        "safetensors",
        "sentencepiece",
        "numpy",
        "hydra-core",
        "psutil",  # megatron's checkpoint writer dies silently without it
        # 4.3's fork-safety audit hook (torch's dependency) segfaults a rank when the garbage
        # collector runs inside it while megatron's save unpickles the ranks' common states.
        "filelock<4.3",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "sacrebleu==2.6.*",
        "rouge-score==0.1.2",
    ],
    extras_require={
        # apex is not on PyPI: see README.md for the source build. TE 2.10-2.18 take
        # flash-attn 2.1.1 <= v <= 2.8.3 and compare post releases too (2.8.3.post1 is
        # rejected), so flash-attn is pinned to the newest one they all accept; TE builds its
        # PyTorch extension against the installed torch. Start-up checks the pair
        # (platform/gpu_versions.py) and `chimed gpu-check` prints it.
        "gpu": ["transformer-engine[pytorch]>=2.10,<2.19", "flash-attn==2.8.3"],
        "test": ["pytest", "ruff", "pyarrow"],  # pyarrow: the Parquet tests run in CI too
        # Parquet data files (data/records.py); everything else reads JSON Lines, JSON, CSV.
        "data": ["pyarrow"],
    },
    entry_points={"console_scripts": ["chimed=megatron_chimed.cli:main"]},
)
