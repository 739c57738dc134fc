"""Checkpoint folders shared by the converter and every training stage."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or used as it is; the message names the file."""
