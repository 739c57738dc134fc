"""Builders of small, offline test assets (tiny Ziya checkpoints, tokenizers)."""
