"""Hostile inputs (issue 12): nothing is lost, nothing is silently wrong, every refusal is one clear line.

Each test is one case from the issue's list: files that would be overwritten, headers that lie about
their offsets, ids and labels out of range, readers fed arbitrary bytes.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import tinyllama_ref as tl
from tinyllama_ref import cli
from tinyllama_ref.formats.checkpoint import random_tensors
from tinyllama_ref.formats.safetensors import CheckpointError, read_safetensors, write_safetensors
from test_errors import CONFIG, save_checkpoint

gguf = pytest.importorskip("gguf")
from test_gguf import Q, tiny_metadata, tiny_hf_tensors, to_gguf_tensors, write_gguf, write_tiny  # noqa: E402


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(tmp_path / "ckpt")


@pytest.fixture
def model(ckpt):
    return tl.load(ckpt)


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- data loss: convert, dump ----------------------------------------------------------------------

def test_convert_refuses_a_non_empty_directory_unless_forced(tmp_path, capsys):
    gguf_path, hf = write_tiny(tmp_path / "tiny.gguf", Q.F32)
    old = save_checkpoint(tmp_path / "old")
    (old / "model.safetensors.index.json").write_text("{}")
    (old / "tokenizer.model").write_bytes(b"stale")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    code, _, err = run_cli(["convert", gguf_path, old], capsys)
    assert code == 1 and "is not empty" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before  # untouched
    code, _, err = run_cli(["convert", gguf_path, old, "--force"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in old.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                    "tokenizer.json", "tokenizer_config.json"]
    np.testing.assert_array_equal(tl.load(old).params["model"]["norm"]["weight"], hf["model.norm.weight"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_convert_into_an_empty_or_new_directory(tmp_path, capsys):
    gguf_path, _ = write_tiny(tmp_path / "tiny.gguf", Q.F32)
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "dir"):
        code, _, err = run_cli(["convert", gguf_path, out], capsys)
        assert code == 0, err
        assert (out / "model.safetensors").is_file()


def test_convert_checks_everything_before_writing_anything(tmp_path, capsys):
    metadata = dict(tiny_metadata(), **{"tokenizer.ggml.pre": "no-such-pre-tokenizer"})
    gguf_path = write_gguf(tmp_path / "bad.gguf", to_gguf_tensors(tiny_hf_tensors(), Q.F32), metadata)
    old = save_checkpoint(tmp_path / "old")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    code, _, err = run_cli(["convert", gguf_path, old, "--force"], capsys)
    assert code == 1 and "no-such-pre-tokenizer" in err
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "old"]


def test_dump_refuses_to_overwrite_unless_forced(ckpt, capsys):
    weights = (ckpt / "model.safetensors").read_bytes()
    code, _, err = run_cli(["dump", "--model", ckpt, "--prompt", "hi", "--out", ckpt / "model.safetensors"],
                           capsys)
    assert code == 1 and "exists" in err and "--force" in err
    assert (ckpt / "model.safetensors").read_bytes() == weights


def test_dump_force_replaces_through_a_rename(tmp_path, capsys):
    out = tmp_path / "acts.npz"
    out.write_bytes(b"old")
    inode = out.stat().st_ino
    code, _, err = run_cli(["dump", "--prompt", "hi", "--out", out, "--force"], capsys)
    assert code == 0, err
    assert out.stat().st_ino != inode  # a new file renamed into place, not the old one truncated
    assert "logits" in np.load(out).files


def test_json_writes_go_through_a_rename(tmp_path):
    from tinyllama_ref.formats.safetensors import write_text_atomic

    path = tmp_path / "a.json"
    path.write_text("old")
    inode = path.stat().st_ino
    write_text_atomic(path, "{}")
    assert path.read_text() == "{}" and path.stat().st_ino != inode
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
