"""The safetensors writer replaces a file atomically: readers of the old file keep it, a failed write
leaves it, and the new file's permissions are those a plain open() would give."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from tinyllama_ref import atomic
from tinyllama_ref.formats.safetensors import read_safetensors, write_safetensors


def tensors(value: float) -> dict:
    return {"a": np.full((3, 4), value, np.float32), "b": np.arange(5, dtype=np.int64)}


def test_a_reader_of_the_old_file_keeps_reading_it(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tensors(1.0))
    old = read_safetensors(path)  # memory-mapped
    write_safetensors(path, tensors(2.0), metadata={"format": "pt"})
    np.testing.assert_array_equal(old["a"], tensors(1.0)["a"])
    np.testing.assert_array_equal(read_safetensors(path)["a"], tensors(2.0)["a"])
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tensors(1.0))
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)  # the writer every file goes through
    with pytest.raises(OSError, match="No space left"):
        write_safetensors(path, tensors(2.0))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_new_file_has_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_safetensors(tmp_path / "model.safetensors", tensors(1.0))
        (tmp_path / "config.json").write_text("{}")
    finally:
        os.umask(old)
    mode = (tmp_path / "model.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask == (tmp_path / "config.json").stat().st_mode & 0o777
