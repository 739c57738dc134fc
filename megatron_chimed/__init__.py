"""megatron-chimed: an open, runnable training framework for ChiMed-GPT on Megatron-core."""

__version__ = "0.1.0"
