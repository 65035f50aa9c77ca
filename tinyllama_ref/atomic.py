"""Files that appear whole or not at all: written beside their place, synced, then renamed onto it.

A reader that has the old file open (or memory-mapped) keeps reading the old bytes, and a crash
leaves the old file (or none), never half a file. Checkpoints, tokenizer files and parity dumps
are all written this way.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) through a temporary file and a rename, as `replacing` writes bytes."""
    with replacing(Path(path)) as f:
        f.write(text.encode("utf-8"))


@contextmanager
def replacing(path: Path):
    """A new file opened for writing that replaces `path` only once it is complete and on disk."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # O_EXCL: a name nobody else holds; mode 0o666 less the umask, as a plain open() creates
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temporary file beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
