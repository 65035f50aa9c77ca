"""Errors shared by the file formats and the loaders (each message names the file, field or tensor)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file or tensor that cannot be used; the message says which and why."""
