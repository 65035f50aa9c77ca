"""Errors shared by the file formats and the loaders (each message names the file, field or tensor)."""
from __future__ import annotations

import reprlib


class CheckpointError(ValueError):
    """A checkpoint file or tensor that cannot be used; the message says which and why."""


class _Short(reprlib.Repr):
    """reprlib's bounded repr, and an integer too long to print (Python refuses past 4300 digits) by its size."""

    def repr_int(self, x, level):
        return super().repr_int(x, level) if x.bit_length() < 256 else f"<an integer of {x.bit_length()} bits>"


_SHORT = _Short()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxstring = 3, 6, 6, 4, 60


def short(value) -> str:
    """The repr of a value read from a file, cut short for an error message: a pickle of 700 bytes can
    nest lists with 2^39 leaves, which a plain repr would take minutes and gigabytes to write.

    >>> short([list(range(100))])
    '[[0, 1, 2, 3, 4, 5, ...]]'
    """
    return _SHORT.repr(value)
