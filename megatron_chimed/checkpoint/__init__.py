"""Checkpoint folders shared by the converter and every training stage."""
