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
from tinyllama_ref.errors import CheckpointError
from tinyllama_ref.formats.safetensors import read_safetensors
from test_errors import ckpt, model, save_checkpoint  # noqa: F401 (fixtures shared with test_errors)

gguf = pytest.importorskip("gguf")
from test_gguf import Q, tiny_metadata, tiny_hf_tensors, to_gguf_tensors, write_gguf, write_tiny  # noqa: E402


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
    from tinyllama_ref.atomic import write_text_atomic

    path = tmp_path / "a.json"
    path.write_text("old")
    inode = path.stat().st_ino
    write_text_atomic(path, "{}")
    assert path.read_text() == "{}" and path.stat().st_ino != inode
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


# -- safetensors headers that lie ----------------------------------------------------------------------

def write_raw_safetensors(path, header: dict, data: bytes):
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


F32_2x2 = {"dtype": "F32", "shape": [2, 2]}


@pytest.mark.parametrize("offsets, n_floats, why", [
    ({"a": [0, 16], "b": [0, 16]}, 4, "overlaps"),  # b would silently be a copy of a
    ({"a": [0, 16], "b": [8, 24]}, 6, "overlaps"),
    ({"a": [0, 16], "b": [20, 36]}, 9, "gap"),
    ({"a": [16, 32], "b": [0, 16]}, 8, None),  # out of order but tiling: accepted, as by the safetensors library
    ({"a": [0, 16], "b": [16, 32], "c": [32, 48]}, 8, "truncated"),  # past the end
    ({"a": [0, 16]}, 8, "trailing"),
])
def test_data_offsets_must_tile_the_data(tmp_path, offsets, n_floats, why):
    header = {name: dict(F32_2x2, data_offsets=o) for name, o in offsets.items()}
    data = np.arange(n_floats, dtype=np.float32).tobytes()
    path = write_raw_safetensors(tmp_path / "x.safetensors", header, data)
    if why is None:
        out = read_safetensors(path)
        np.testing.assert_array_equal(out["b"].ravel(), [0, 1, 2, 3])
        return
    with pytest.raises(CheckpointError, match=why) as e:
        read_safetensors(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("entry, match", [
    ({"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}, "non-negative integers"),
    ({"dtype": "F32", "shape": [2**40, 2**40, 2**40], "data_offsets": [0, 16]}, "too large"),
    ({"dtype": "F32", "shape": [0, 2**61], "data_offsets": [0, 0]}, "too large"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": [0.0, 16.0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [2.0, 2], "data_offsets": [0, 16]}, "non-negative integers"),
    ({"dtype": ["F32"], "shape": [2, 2], "data_offsets": [0, 16]}, "unsupported dtype"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16, 3]}, "corrupt header entry"),
])
def test_bad_header_entries_name_the_file_and_tensor(tmp_path, entry, match):
    path = write_raw_safetensors(tmp_path / "x.safetensors", {"w": entry}, bytes(16))
    with pytest.raises(CheckpointError, match=match) as e:
        read_safetensors(path)
    assert str(path) in str(e.value) and "'w'" in str(e.value)


def test_a_header_with_a_million_entries_fails_fast(tmp_path):
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(1_000_000)}
    path = write_raw_safetensors(tmp_path / "big.safetensors", header, b"")
    with pytest.raises(CheckpointError, match="more than 100000 tensors"):
        read_safetensors(path)


def test_deeply_nested_header_json(tmp_path):
    head = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head)
    with pytest.raises(CheckpointError, match="not JSON"):
        read_safetensors(path)


# -- shard indexes and layer counts ------------------------------------------------------------------

def sharded(tmp_path, weight_map):
    path = save_checkpoint(tmp_path / "sharded")
    (path / "model.safetensors").rename(path / "shard-1.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path


@pytest.mark.parametrize("weight_map, match", [
    (["shard-1.safetensors"], "must map tensor names to file names"),
    ({"model.norm.weight": 1}, "must map tensor names to file names"),
    ({"model.norm.weight": "/etc/passwd"}, "'/etc/passwd', which is not a file in"),
    ({"model.norm.weight": "../sharded/shard-1.safetensors"}, "which is not a file in"),
])
def test_bad_shard_index_is_refused(tmp_path, weight_map, match):
    path = sharded(tmp_path, weight_map)
    with pytest.raises(tl.CheckpointError, match=match) as e:
        tl.load(path)
    assert "model.safetensors.index.json" in str(e.value)


def test_a_huge_layer_count_fails_at_the_first_missing_layer(tmp_path):
    path = save_checkpoint(tmp_path / "c")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=10**7)))
    with pytest.raises(tl.CheckpointError, match=r"missing tensor\(s\) of layer 2 .*10000000.* layers 0-1"):
        tl.load(path)


def test_a_huge_gguf_block_count_fails_fast(tmp_path):
    metadata = dict(tiny_metadata(), **{"llama.block_count": 10**6})
    path = write_gguf(tmp_path / "big.gguf", to_gguf_tensors(tiny_hf_tensors(), Q.F32), metadata)
    with pytest.raises(tl.CheckpointError, match="missing tensor.* of layer 2"):
        tl.load(path)


# -- model inputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("label, where", [(-5, (0, 2)), (32, (0, 1)), (2**40, (0, 3))])
def test_labels_out_of_range_name_the_label_and_position(model, label, where):
    labels = [[5, 6, 7, 8]]
    labels[0][where[1]] = label
    with pytest.raises(tl.InputError, match=rf"label {label} at position \(0, {where[1]}\) is outside"):
        model([[5, 6, 7, 8]], labels=labels)


def test_labels_of_minus_100_are_still_ignored(model):
    assert np.isfinite(float(model([[5, 6, 7, 8]], labels=[[-100, 6, -100, 8]]).loss))


def test_a_failed_forward_leaves_the_cache_as_it_was(model):
    cache = model([[1, 2, 3]], use_cache=True).past_key_values
    with pytest.raises(tl.InputError):
        model([[4]], past_key_values=cache, use_cache=True, labels=[[-7]])
    assert cache.length == 3


@pytest.mark.parametrize("ids", [[[]], [], np.zeros((0, 3), np.int64)])
def test_empty_input_says_it_is_empty(model, ids):
    with pytest.raises(tl.InputError, match="empty"):
        model(ids)


def test_an_attention_matrix_that_cannot_fit_is_refused_before_it_is_allocated(model):
    with pytest.raises(tl.InputError, match=r"attention matrix .* GiB, more than the .* GiB available.*context is 64"):
        model(np.ones((1, 1_000_000), np.int64))


# -- GGUF ----------------------------------------------------------------------------------------------

def gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def raw_gguf(path, kv: bytes = b"", n_kv: int = 0, tensors=(), data: bytes = b""):
    """A GGUF v3 file from raw parts: kv is the encoded metadata; tensors are (name, ne, type, offset)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), n_kv) + kv
    for name, ne, kind, offset in tensors:
        out += gguf_string(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
        out += struct.pack("<IQ", kind, offset)
    out += b"\0" * (-len(out) % 32) + data
    path.write_bytes(out)
    return path


def test_gguf_with_a_tensor_name_twice_is_refused(tmp_path):
    from tinyllama_ref.formats.gguf_file import GGUFError, read_gguf_file

    path = raw_gguf(tmp_path / "dup.gguf", tensors=[("a", [4], 0, 0), ("a", [4], 0, 16)], data=bytes(32))
    with pytest.raises(GGUFError, match=r"dup.gguf: tensor 'a' appears twice"):
        read_gguf_file(path)


def test_gguf_arrays_nested_100000_deep(tmp_path):
    from tinyllama_ref.formats.gguf_file import ARRAY, GGUFError, read_gguf_file

    depth = 100_000
    kv = gguf_string("x") + struct.pack("<I", ARRAY) + struct.pack("<IQ", ARRAY, 1) * depth
    path = raw_gguf(tmp_path / "deep.gguf", kv, n_kv=1)
    with pytest.raises(GGUFError, match=r"deep.gguf: arrays nested more than 16 deep in metadata key 'x'"):
        read_gguf_file(path)


@pytest.mark.parametrize("key, value", [("llama.attention.head_count", 0), ("llama.block_count", 0),
                                        ("llama.embedding_length", "16"), ("llama.attention.head_count_kv", 0)])
def test_gguf_counts_must_be_positive_integers(tmp_path, key, value):
    from tinyllama_ref.formats.gguf import GGUFError

    metadata = dict(tiny_metadata(), **{key: value})
    path = write_gguf(tmp_path / "bad.gguf", to_gguf_tensors(tiny_hf_tensors(), Q.F32), metadata)
    with pytest.raises(GGUFError, match=rf"bad.gguf: metadata key {key} is {value!r}, not a positive integer"):
        tl.load(path)


# -- generation, generation_config.json, compare -----------------------------------------------------------

@pytest.fixture(scope="module")
def bundled():
    path = cli.default_model_dir()
    return tl.load(path), tl.load_tokenizer(path)


def test_a_plain_stop_string_is_one_stop_string(bundled):
    model, tok = bundled
    full = tl.generate(model, tok, "In the beginning", max_new_tokens=30, temperature=0)
    stop = full[len(full) // 2:len(full) // 2 + 4]
    assert tl.generate(model, tok, "In the beginning", max_new_tokens=30, temperature=0, stop=stop) == \
        full[:full.index(stop)]
    assert tl.generate(model, tok, "In the beginning", max_new_tokens=30, temperature=0, stop=[stop, "zzzz"]) == \
        full[:full.index(stop)]


@pytest.mark.parametrize("seed", [-1, "abc", 1.5])
def test_a_bad_seed_is_named(bundled, seed):
    model, tok = bundled
    with pytest.raises(ValueError, match=rf"seed={seed!r} must be a non-negative integer"):
        tl.generate(model, tok, "In", max_new_tokens=2, seed=seed)


def test_cli_seed_minus_one_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "hi", "--seed", "-1"])
    assert e.value.code == 2 and "--seed" in capsys.readouterr().err


@pytest.mark.parametrize("content, match", [("[1, 2]", "expected a JSON object, got list"),
                                            ('{"temperature": -1, "do_sample": true}',
                                             "field 'temperature' must be a non-negative number, got -1"),
                                            ('{"top_k": "50"}', "field 'top_k'"),
                                            ("{not json", "not valid JSON")])
def test_bad_generation_config_names_the_file(ckpt, content, match):
    (ckpt / "generation_config.json").write_text(content)
    with pytest.raises(tl.ConfigError, match=match) as e:
        tl.load(ckpt)
    assert "generation_config.json" in str(e.value)


def test_compare_with_nothing_in_common_fails(tmp_path, capsys):
    from tinyllama_ref.parity import save_tensors

    save_tensors(tmp_path / "a.safetensors", {"x": np.zeros(3, np.float32)})
    np.savez(tmp_path / "b.npz", y=np.zeros(3, np.float32))
    code, out, _ = run_cli(["compare", tmp_path / "a.safetensors", tmp_path / "b.npz"], capsys)
    assert code == 1 and "nothing compared" in out


def test_compare_npz_with_an_object_array_names_the_file(tmp_path, capsys):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "ok.npz", x=np.zeros(3, np.float32))
    code, _, err = run_cli(["compare", tmp_path / "obj.npz", tmp_path / "ok.npz"], capsys)
    assert code == 1 and "obj.npz" in err and "error" in err


# -- tokenizers ---------------------------------------------------------------------------------------------

from tinyllama_ref.tokenizer import TokenizerError  # noqa: E402

GOOD_TOKENIZER = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3}, "merges": ["a b"]},
                  "added_tokens": [{"id": 3, "content": "<s>", "special": True}]}


def write_tokenizer_json(tmp_path, spec):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    return path


def test_the_good_tokenizer_json_loads(tmp_path):
    tok = tl.load_tokenizer(write_tokenizer_json(tmp_path, GOOD_TOKENIZER))
    assert tok.encode("ab<s>", add_bos=False) == [2, 3]


@pytest.mark.parametrize("spec, match", [
    ({"model": {"type": "BPE"}}, "field 'model.vocab' must be a non-empty object"),
    ({"model": {"type": "BPE", "vocab": {"a": 0, "b": -1}}}, "token 'b' the id -1"),
    ({**GOOD_TOKENIZER, "added_tokens": [{"content": "<x>"}]}, r"added_tokens\[0\] needs a non-negative integer 'id'"),
    ({**GOOD_TOKENIZER, "normalizer": {"prepend": "x"}}, "field 'normalizer' must be null or an object with a "
                                                          "string 'type'"),
    ([1, 2], "expected a JSON object, got list"),
    ({**GOOD_TOKENIZER, "post_processor": {"type": "TemplateProcessing", "single": [
        {"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}]}}, "uses '<s>', which its 'special_tokens'"),
    ({"model": {"type": "BPE", "vocab": {"a": 0, "b": 10**12}}}, "token ids go up to 1000000000000"),
    ({**GOOD_TOKENIZER, "added_tokens": [{"id": 3, "content": "<s>"}, {"id": 5, "content": "<x>"}]},
     r"added_tokens past the vocabulary must take the ids 4, 5, \.\.\. in turn; they take \[5\]"),
    ({**GOOD_TOKENIZER, "decoder": {"type": "Strip"}}, "malformed tokenizer.json"),
])
def test_bad_tokenizer_json_names_the_file_and_field(tmp_path, spec, match):
    path = write_tokenizer_json(tmp_path, spec)
    with pytest.raises(TokenizerError, match=match) as e:
        tl.load_tokenizer(path)
    assert "tokenizer.json" in str(e.value)


@pytest.mark.parametrize("decoder, match", [({"x": {"content": "<y>"}}, "key 'x' is not a token id"),
                                            ({"99": {"content": "<y>"}}, r"must take the ids 4, 5, \.\.\. in turn; "
                                                                          r"they take \[99\]"),
                                            ({"1": "b"}, "is not an object")])
def test_bad_added_tokens_decoder_is_refused(tmp_path, decoder, match):
    write_tokenizer_json(tmp_path, GOOD_TOKENIZER)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    with pytest.raises(TokenizerError, match=match):
        tl.load_tokenizer(tmp_path)


def test_a_lone_surrogate_is_named_with_its_position(bundled):
    _, tok = bundled
    with pytest.raises(TokenizerError, match=r"'\\ud800' \(a lone surrogate, not a character\) at position 5"):
        tok.encode("abcde\ud800b")


@pytest.mark.parametrize("ids, match", [([2**70], "token id 1180591620717411303424 is outside the vocabulary"),
                                        ([[5], [6, 7]], "ragged"), ([1.7], "integer token ids, got 1.7")])
def test_bad_ids_to_decode(bundled, ids, match):
    _, tok = bundled
    with pytest.raises(TokenizerError, match=match):
        tok.decode(ids)


# -- chat and the command line -------------------------------------------------------------------------------

def checkpoint_with_template(tmp_path, template):
    import shutil

    path = tmp_path / "m"
    shutil.copytree(cli.default_model_dir(), path)
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return path


@pytest.mark.parametrize("template, match", [("{% for m in messages %}{{ m.content }", "TemplateSyntaxError"),
                                             ("{{ ''.__class__.__mro__ }}", "SecurityError")])
def test_a_broken_chat_template_is_one_cli_line(tmp_path, monkeypatch, capsys, template, match):
    import io

    path = checkpoint_with_template(tmp_path, template)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    code, _, err = run_cli(["chat", "--model", path, "-n", "2"], capsys)
    assert code == 1 and "the chat template failed" in err and match in err
    assert len(err.strip().splitlines()) == 1


def test_a_line_that_is_not_utf8_is_skipped(bundled):
    import io

    model, tok = bundled
    lines = iter(["In the beginning", "caf\udce9", "And God said"])

    def typed(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    messages = chat_fn()(model, tok, max_new_tokens=2, temperature=0, input_fn=typed, output=io.StringIO())
    assert [m["content"] for m in messages if m["role"] == "user"] == ["In the beginning", "And God said"]


def chat_fn():
    from tinyllama_ref.conversation import chat

    return chat


def test_chat_cli_skips_a_bad_stdin_line(monkeypatch, capsys):
    import io

    raw = io.BytesIO(b"In the beginning\ncaf\xe9\nAnd God said\n")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(raw, encoding="utf-8"))
    code, out, err = run_cli(["chat", "-n", "2", "-t", "0"], capsys)
    assert code == 0 and "skipped a line that is not valid UTF-8" in err
    assert out.count(">>> ") == 4  # three lines read, then end of input


def test_invalid_utf8_in_a_cli_argument(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "caf\udce9"])
    assert e.value.code == 2 and "not valid UTF-8" in capsys.readouterr().err


def test_gguf_shape_whose_size_overflows_int64(tmp_path):
    from tinyllama_ref.formats.gguf_file import GGUFError, read_gguf_file

    path = raw_gguf(tmp_path / "big.gguf", tensors=[("a", [4, 2**40, 2**40, 2**40], 0, 0)], data=bytes(64))
    with pytest.raises(GGUFError, match="big.gguf: tensor 'a' needs bytes .* it is truncated"):
        read_gguf_file(path)


# == round 3 (issue 22): the surfaces added since ==============================================================

from tinyllama_ref.formats.torch_pickle import read_torch_file  # noqa: E402
from test_meta_checkpoint import tensor_pickle, write_pth  # noqa: E402


# -- a tokenizer saved over another one ------------------------------------------------------------------------

def test_tokenizer_save_pretrained_removes_another_tokenizers_files(tmp_path, bundled):
    """What was saved is what loads. Our loader reads tokenizer.model before tokenizer.json, transformers the
    other way round, so a stale file of the other kind would load instead of the saved one in one of them."""
    _, sp = bundled
    bpe = tl.load_tokenizer(write_tokenizer_json(tmp_path, GOOD_TOKENIZER))
    d = tmp_path / "d"
    sp.save_pretrained(d)
    (d / "chat_template.jinja").write_text("{{ 'old' }}")  # another model's template
    (d / "vocab.json").write_text("{}")
    bpe.save_pretrained(d)
    assert sorted(p.name for p in d.iterdir()) == ["special_tokens_map.json", "tokenizer.json",
                                                   "tokenizer_config.json"]
    again = tl.load_tokenizer(d)
    assert again.encode("ab<s>", add_bos=False) == [2, 3] and again.chat_template is None
    sp.save_pretrained(d)  # and back: the BPE tokenizer.json would be what transformers loads
    assert not (d / "tokenizer.json").exists()
    assert tl.load_tokenizer(d).encode("In the beginning") == sp.encode("In the beginning")


# -- Meta .pth archives ---------------------------------------------------------------------------------------

def test_a_compressed_storage_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    """torch.save stores storages uncompressed; torch.load would inflate a deflated one (here 16 MiB from a
    16 KiB file; zip64 lets the declared size reach 2^64). We refuse it from the zip's directory instead."""
    import zipfile

    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", tensor_pickle((2048, 2048), (2048, 1), numel=2048 * 2048))
        z.writestr("archive/data/0", bytes(16 * 2**20), compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 64 * 1024

    def no_inflating(kind, read=zipfile._get_decompressor):
        assert kind == zipfile.ZIP_STORED, "a storage was inflated"
        return read(kind)

    monkeypatch.setattr(zipfile, "_get_decompressor", no_inflating)
    with pytest.raises(CheckpointError, match=r"bomb.pth: storage 'archive/data/0' is compressed \(\d+ bytes that "
                                              r"would inflate to 16777216\)"):
        read_torch_file(path)
    with zipfile.ZipFile(path, "w") as z:  # the one other entry read whole
        z.writestr("archive/data.pkl", tensor_pickle((2, 2), (2, 1)))
        z.writestr("archive/byteorder", bytes(16 * 2**20), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="archive/byteorder is 16777216 bytes"):
        read_torch_file(path)


def doubling_list(depth: int) -> bytes:
    """Pickle opcodes leaving a list whose repr has 2**depth leaves: each level holds the one below twice
    (MARK, BINGET i-1, BINGET i-1, LIST, BINPUT i, POP): 9 bytes a level."""
    out = b"]q\x000"
    for i in range(1, depth + 1):
        out += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i]) + b"0"
    return out + b"h" + bytes([depth])


STORAGE_PID = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ"


@pytest.mark.parametrize("pkl, match", [
    (b"\x80\x02" + doubling_list(39) + b"Q.", r"unexpected persistent id \[\[\[\[\.\.\.\]"),
    (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + STORAGE_PID + b"K\x00" + doubling_list(39) + b"h\x27\x89tR.",
     "not a valid strided view"),
], ids=["persistent id", "size and stride"])
def test_a_list_with_2_to_the_39_leaves_is_never_printed(tmp_path, pkl, match):
    path = write_pth(tmp_path / "t.pth", pkl, {"0": bytes(24)})
    assert len(pkl) < 500
    with pytest.raises(CheckpointError, match=match) as e:
        read_torch_file(path)
    assert len(str(e.value)) < 500  # bounded (reprlib), where str() would write 2^39 leaves


def test_weights_that_reread_one_stored_float_are_refused(tmp_path):
    """torch.load accepts any strided view (torch.zeros(1).expand(n, n) saves as stride (0, 0)); a weight that
    reads one element twice is never what a checkpoint holds, and 4 bytes would make a 64 MiB matrix here
    (16 GiB in the issue) that each matmul copies. Sliced and transposed views still read."""
    path = write_pth(tmp_path / "t.pth", tensor_pickle((4096, 4096), (0, 0), numel=1), {"0": bytes(4)})
    with pytest.raises(CheckpointError, match=r"t.pth: storage '0': a tensor of size \(4096, 4096\) with stride "
                                              r"\(0, 0\) reads some elements more than once"):
        read_torch_file(path)
    path = write_pth(tmp_path / "s.pth", tensor_pickle((2, 2), (1, 1), numel=6), {"0": bytes(24)})  # 0 1 / 1 2
    with pytest.raises(CheckpointError, match="more than once"):
        read_torch_file(path)
    path = write_pth(tmp_path / "ok.pth", tensor_pickle((2, 2), (1, 3), offset=1), {"0": bytes(24)})
    assert read_torch_file(path)[0]["w"].shape == (2, 2)


def meta_dir(path, params: dict | None = None):
    """Enough of Meta's layout for the path to count as one: params.json and a (tiny) consolidated.00.pth."""
    path.mkdir(parents=True)
    base = {"dim": 32, "n_layers": 1, "n_heads": 4, "multiple_of": 16, "norm_eps": 1e-5, "vocab_size": 64}
    (path / "params.json").write_text(json.dumps({**base, **(params or {})}))
    write_pth(path / "consolidated.00.pth", tensor_pickle((2, 2), (2, 1)), {"0": bytes(24)})
    return path


@pytest.mark.parametrize("argv", [["info", "--model", "{m}"], ["mask", "hi", "--model", "{m}"],
                                  ["convert", "{m}", "{out}"]])
def test_an_infinite_ffn_dim_multiplier_is_a_config_error(tmp_path, capsys, argv):
    meta = meta_dir(tmp_path / "meta", {"ffn_dim_multiplier": float("inf")})
    assert "Infinity" in (meta / "params.json").read_text()  # what json.loads reads as float('inf')
    code, _, err = run_cli([a.format(m=meta, out=tmp_path / "out") for a in argv], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "params.json: field 'ffn_dim_multiplier' is inf, expected a positive finite number" in err
    from tinyllama_ref.formats.meta import read_meta_config

    with pytest.raises(tl.ConfigError, match="ffn_dim_multiplier"):
        read_meta_config(meta)


# -- convert into its own source ------------------------------------------------------------------------------

@pytest.mark.parametrize("out", ["meta", "."])
def test_convert_refuses_an_output_that_is_or_holds_the_input(tmp_path, capsys, out):
    meta = meta_dir(tmp_path / "meta")
    (tmp_path / "unrelated.txt").write_text("keep me")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _, err = run_cli(["convert", meta, tmp_path / out, "--force"], capsys)
    assert code == 1 and ("is the checkpoint to convert" if out == "meta" else "is a folder holding") in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_convert_refuses_a_folder_holding_the_gguf(tmp_path, capsys):
    gguf_path, _ = write_tiny(tmp_path / "tiny.gguf", Q.F32)
    code, _, err = run_cli(["convert", gguf_path, tmp_path, "--force"], capsys)
    assert code == 1 and "is a folder holding" in err and gguf_path.is_file()


# -- GGUF tensors over the same bytes ---------------------------------------------------------------------------

def move_tensor(path, name: str, to: str | None = None, by: int = 0):
    """Rewrite the data offset of tensor `name` in a GGUF file: to tensor `to`'s offset, or moved by `by` bytes."""
    raw = bytearray(path.read_bytes())

    def offset_at(n: str) -> int:  # a tensor info: name, n_dims (u32), the dims (u64 each), type (u32), offset (u64)
        at = raw.rindex(gguf_string(n)) + len(gguf_string(n))
        return at + 4 + 8 * struct.unpack_from("<I", raw, at)[0] + 4

    old = struct.unpack_from("<Q", raw, offset_at(to or name))[0]
    struct.pack_into("<Q", raw, offset_at(name), old + by)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("move, match", [
    (dict(to="blk.0.attn_q.weight"), r"tensor 'blk.0.attn_k.weight' is at offset \d+ of the data, but the tensors "
                                     r"before it end at \d+"),
    (dict(by=4), r"tensor 'blk.0.attn_k.weight' is at offset \d+ of the data"),
])
def test_gguf_tensors_must_follow_each_other(tmp_path, move, match):
    """As llama.cpp's gguf.cpp ("tensor '%s' has offset %zu, expected %zu"): before, both files loaded, one
    tensor reading another's bytes (or 4 bytes off), max |Δlogits| 0.009."""
    path, _ = write_tiny(tmp_path / "tiny.gguf", Q.F32, tied=False)
    tl.load(path)
    move_tensor(path, "blk.0.attn_k.weight", **move)
    from tinyllama_ref.formats.gguf_file import GGUFError

    with pytest.raises(GGUFError, match=match):
        tl.load(path)


# -- the conformance pack and compare ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_pack(tmp_path_factory):
    from tinyllama_ref.golden_pack import write_pack

    out = tmp_path_factory.mktemp("pack")
    write_pack(out, ["mha"])
    return out


@pytest.fixture
def pack_copy(small_pack, tmp_path):
    import shutil

    return shutil.copytree(small_pack, tmp_path / "pack")


def test_a_tampered_reference_is_refused_by_name(pack_copy, capsys):
    """A pack whose reference logits were scaled by 3: its SHA-256 no longer matches the manifest's."""
    from tinyllama_ref.parity import load_tensors, save_tensors

    theirs = pack_copy.parent / "theirs.safetensors"
    ref = load_tensors(pack_copy / "mha" / "prefill.safetensors")
    save_tensors(theirs, {**ref, "logits": ref["logits"] * 3})
    save_tensors(pack_copy / "mha" / "prefill.safetensors", {**ref, "logits": ref["logits"] * 3})
    code, out, err = run_cli(["compare", pack_copy / "mha", theirs, "--input", "prefill"], capsys)
    assert code == 1 and "prefill.safetensors: its SHA-256 is not the one manifest.json gives" in err
    assert "agrees" not in out


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["tolerances"]["float32"].update(rtol=1e9), r"'tolerances.float32.rtol' is 1000000000.0, expected a "
                                                            r"number in \[0, 1\)"),
    (lambda m: m["tolerances"]["float32"].update(rtol="x"), "'tolerances.float32.rtol' is 'x'"),
    (lambda m: m["tolerances"]["float32"].pop("atol"), "'tolerances.float32.atol' is None"),
    (lambda m: m.update(tolerances=None), "field 'tolerances' must be an object"),
    (lambda m: m["cases"]["mha"]["sha256"].pop("logits.safetensors", None) or m["cases"]["mha"]["sha256"].pop(
        "batch.safetensors"), "'cases.mha.sha256' must give the SHA-256"),
    (lambda m: m.update(cases=[1]), "does not list a case 'mha'"),
])
def test_a_bad_manifest_is_refused_by_field(pack_copy, capsys, edit, match):
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    edit(manifest)
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["compare", pack_copy / "mha", pack_copy / "mha" / "prefill.safetensors"], capsys)
    assert code == 1 and "manifest.json" in err and len(err.strip().splitlines()) == 1
    assert __import__("re").search(match, err), err


@pytest.mark.parametrize("array", [np.array([1 + 2j, 3], np.complex64), np.array(["1.0", "2.0"])])
def test_compare_takes_real_numbers_only(tmp_path, capsys, array):
    """np.asarray(x, float64) drops an imaginary part and parses strings: both used to "agree"."""
    np.savez(tmp_path / "odd.npz", x=array)
    np.savez(tmp_path / "ok.npz", x=np.real(array.astype(complex)).astype(np.float32))
    code, _, err = run_cli(["compare", tmp_path / "odd.npz", tmp_path / "ok.npz"], capsys)
    assert code == 1 and f"odd.npz: tensor 'x' is {array.dtype}: a dump holds real numbers only" in err


@pytest.mark.parametrize("flag, value", [("--rtol", "inf"), ("--rtol", "nan"), ("--atol", "-1")])
def test_compare_tolerances_are_finite_and_not_negative(tmp_path, capsys, flag, value):
    from tinyllama_ref.parity import compare, save_tensors

    save_tensors(tmp_path / "a.safetensors", {"x": np.zeros(3, np.float32)})
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", str(tmp_path / "a.safetensors"), str(tmp_path / "a.safetensors"), flag, value])
    assert e.value.code == 2 and f"{flag}: expected a finite number >= 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match=rf"{flag[2:]} must be a finite number >= 0, got {value}"):
        compare({"x": np.zeros(3)}, {"x": np.zeros(3)}, **{flag[2:]: float(value)})


# -- perplexity, mask and the tokenizer's arguments ------------------------------------------------------------

@pytest.mark.skipif(not __import__("os").path.exists("/dev/zero"), reason="needs /dev/zero")
def test_perplexity_of_dev_zero_fails_at_the_first_chunk(capsys):
    code, _, err = run_cli(["perplexity", "/dev/zero"], capsys)
    assert code == 1 and "/dev/zero: a NUL byte at byte 0: not a text file" in err


def test_perplexity_of_an_endless_pipe_stops_at_the_limit(monkeypatch, capsys):
    import importlib
    import io

    perplexity = importlib.import_module("tinyllama_ref.perplexity")  # the module; tl.perplexity is its function

    class Endless(io.RawIOBase):
        read_bytes = 0

        def readable(self):
            return True

        def readinto(self, buffer):
            buffer[:] = b"a" * len(buffer)
            Endless.read_bytes += len(buffer)
            return len(buffer)

    monkeypatch.setattr(perplexity, "MAX_TEXT_BYTES", 4 * perplexity.CHUNK)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BufferedReader(Endless())))
    code, _, err = run_cli(["perplexity", "-"], capsys)
    assert code == 1 and "stdin: more than 4 MiB" in err
    assert Endless.read_bytes <= 6 * perplexity.CHUNK  # the limit and a chunk, with the buffer's read-ahead


def test_mask_padding_is_bounded_by_the_context(capsys, bundled):
    model, tok = bundled
    code, _, err = run_cli(["mask", "hi", "--pad-left", "20000"], capsys)
    n = len(tok.encode("hi"))  # BOS and the text
    assert code == 1 and (f"{n} tokens and pad_left = 20000 make {n + 20000} positions, more than the model's "
                          f"context (max_position_embeddings = 256)") in err
    from tinyllama_ref.mask_view import visualize_mask

    assert "Attention Matrix" in visualize_mask(model, tok, "hi", pad_left=256 - n)  # the context, exactly
    with pytest.raises(ValueError, match="more than the model's context"):
        visualize_mask(model, tok, "hi", pad_left=257 - n)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(padding=True, pad_to_multiple_of=-3), ValueError, "pad_to_multiple_of must be >= 0, got -3"),
    (dict(truncation=True, max_length=-5), ValueError, "max_length must be >= 0, got -5"),
    (dict(padding="max_length", max_length=-5), ValueError, "max_length must be >= 0"),
    (dict(padding=True, pad_to_multiple_of=2.5), TypeError, "pad_to_multiple_of must be an integer or None"),
])
def test_negative_lengths_in_a_tokenizer_call(bundled, kwargs, error, match):
    """transformers' fast tokenizer raises OverflowError from Rust for these (TypeError for a float); ours
    used to give ragged rows and uncut ids."""
    _, tok = bundled
    tok.pad_token = tok.eos_token
    with pytest.raises(error, match=match):
        tok(["a b c d e f g", "hi"], **kwargs)


# -- hardening: the unpickler changes nothing of ours; a killed write's leftovers go ------------------------------

@pytest.mark.parametrize("pkl, target", [
    (b"ctorch\nHalfStorage\n(S'float32'\nS'bogus'\ntb.", "StorageType"),  # through dataclass's __setstate__
    (b"ctorch._utils\n_rebuild_parameter\n(dS'evil'\nI1\nsb.", "function"),
    (b"ctorch._utils\n_rebuild_parameter\n(N(dS'__defaults__'\n(I1\nI2\ntstb.", "function"),  # slot state: setattr
    (b"ctorch._utils\n_rebuild_tensor_v2\n(dS'evil'\nI1\nsb.", "method"),  # its function's __dict__
    (b"ccollections\nOrderedDict\n(dS'evil'\nI1\nsb.", "type"),
], ids=["storage type", "function __dict__", "function __defaults__", "bound method", "OrderedDict class"])
def test_build_cannot_change_what_find_class_hands_out(tmp_path, pkl, target):
    from tinyllama_ref.formats import torch_pickle as tp

    with pytest.raises(CheckpointError, match=f"the pickle sets the attributes of a {target}; only a state dict's"):
        read_torch_file(write_pth(tmp_path / "t.pth", pkl))
    assert tp.ALLOWED_GLOBALS[("torch", "HalfStorage")] == tp.StorageType("HalfStorage", "float16")
    assert tp.rebuild_parameter.__defaults__ == (False, None) and tp.rebuild_parameter.__dict__ == {}
    assert tp.SafeUnpickler.rebuild_tensor.__dict__ == {}


def test_build_still_gives_a_state_dict_its_metadata(tmp_path):
    """model.state_dict() is an OrderedDict with a `_metadata` attribute, which torch.save writes with BUILD."""
    pkl = b"ccollections\nOrderedDict\n)R(dS'_metadata'\n(dsb."
    assert read_torch_file(write_pth(tmp_path / "t.pth", pkl)) == ({}, set())


def test_a_killed_save_leaves_staging_that_the_next_save_removes(ckpt, tmp_path, caplog):
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    script = ("import os, sys\nimport tinyllama_ref as tl\nfrom tinyllama_ref.formats import hf_writer\n"
              "model = tl.load(sys.argv[1])\nhf_writer.write_safetensors = lambda *a, **k: os._exit(9)  # killed\n"
              "model.save_pretrained(sys.argv[2])\n")
    package_root = str(__import__("pathlib").Path(tl.__file__).parent.parent)  # this checkout, not an install
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    with subprocess.Popen([sys.executable, "-c", script, str(ckpt), str(out)], env=env, stderr=subprocess.PIPE) as proc:
        assert proc.wait(timeout=120) == 9, proc.stderr.read()
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
    assert [p.name.split("-")[1] for p in left] == [str(proc.pid)] and (left[0] / "config.json").is_file()
    kept = [tmp_path / f".out.partial-{os.getpid()}-live", tmp_path / f".other.partial-{proc.pid}-x",
            tmp_path / ".out.partial-nopid"]  # a live write's, another target's, one that names no process
    for p in kept:
        p.mkdir()
    with caplog.at_level("WARNING", logger="tinyllama_ref.formats.hf_writer"):
        tl.load(ckpt).save_pretrained(out)
    assert not left[0].exists() and all(p.is_dir() for p in kept)
    assert f"removed {left[0]}, left by an interrupted write to {out} (process {proc.pid}, no longer running)" \
        in caplog.text
    assert tl.load(out).config.num_hidden_layers == tl.load(ckpt).config.num_hidden_layers
