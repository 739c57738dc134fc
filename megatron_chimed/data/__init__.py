"""Data for the training stages: pre-training indexed datasets here, SFT data in `sft/`."""
