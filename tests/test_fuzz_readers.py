"""Hypothesis fuzzing of the file readers (issue 12): any bytes either load or raise this project's
own error type, naming the file; never another exception, a hang or a crash."""
from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from tinyllama_ref.config import ConfigError
from tinyllama_ref.formats.checkpoint import checkpoint_files
from tinyllama_ref.formats.gguf_file import GGUFError, read_gguf_file
from tinyllama_ref.errors import CheckpointError
from tinyllama_ref.formats.safetensors import read_safetensors
from tinyllama_ref.tokenizer import TokenizerError
from tinyllama_ref.tokenizer.hf_json import tokenizer_from_json
from tinyllama_ref.tokenizer.sp_model import load_sentencepiece_model

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow],
                database=None)

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                           | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4),
                           max_leaves=20)


def in_file(name: str, data: bytes) -> Path:
    d = Path(tempfile.mkdtemp())
    (d / name).write_bytes(data)
    return d / name


def expect(read, path: Path, errors):
    """`read(path)` either succeeds or raises one of `errors` whose message names the file."""
    try:
        read(path)
    except errors as e:
        assert str(path.parent) in str(e) or path.name in str(e), str(e)


# -- safetensors headers -------------------------------------------------------------------------------

entry = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "X", 3]),
                               "shape": st.lists(st.integers(-2, 2**62), max_size=3) | json_values,
                               "data_offsets": st.lists(st.integers(-4, 64), min_size=0, max_size=3) | json_values})


@FUZZ
@given(header=st.dictionaries(st.text(max_size=6), entry | json_values, max_size=4), data=st.binary(max_size=64))
def test_safetensors_header(header, data):
    head = json.dumps(header).encode()
    expect(read_safetensors, in_file("m.safetensors", struct.pack("<Q", len(head)) + head + data), CheckpointError)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_safetensors_bytes(raw):
    expect(read_safetensors, in_file("m.safetensors", raw), CheckpointError)


# -- shard index -------------------------------------------------------------------------------------------

@FUZZ
@given(index=st.fixed_dictionaries({"weight_map": json_values}) | json_values, raw=st.none() | st.binary(max_size=40))
def test_shard_index(index, raw):
    path = in_file("model.safetensors.index.json", json.dumps(index).encode() if raw is None else raw)
    expect(lambda p: checkpoint_files(p.parent), path, CheckpointError)


# -- GGUF ----------------------------------------------------------------------------------------------------

@st.composite
def gguf_files(draw):
    out = b"GGUF" + struct.pack("<I", draw(st.sampled_from([3, 2, 1])))
    n_tensors, n_kv = draw(st.integers(0, 3)), draw(st.integers(0, 4))
    out += struct.pack("<QQ", n_tensors, n_kv)
    for _ in range(n_kv):
        key = draw(st.text(max_size=6)).encode()
        out += struct.pack("<Q", len(key)) + key + struct.pack("<I", draw(st.integers(0, 14)))
        out += draw(st.binary(max_size=24))
    for _ in range(n_tensors):
        name = draw(st.sampled_from([b"a", b"b", b"a"]))
        dims = draw(st.lists(st.integers(0, 2**40), max_size=3))
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", draw(st.integers(0, 42)),
                                                                           draw(st.integers(0, 64)))
    return out + draw(st.binary(max_size=64))


@FUZZ
@given(data=gguf_files() | st.binary(max_size=100).map(lambda b: b"GGUF" + b))
def test_gguf_metadata(data):
    expect(read_gguf_file, in_file("m.gguf", data), GGUFError)


# -- tokenizer.json ------------------------------------------------------------------------------------------

tokenizer_specs = st.fixed_dictionaries({
    "model": st.fixed_dictionaries({"type": st.sampled_from(["BPE", "WordPiece", 1]),
                                    "vocab": st.dictionaries(st.text(max_size=3), st.integers(-1, 12), max_size=6)
                                    | json_values,
                                    "merges": st.lists(st.text(max_size=5), max_size=3) | json_values}),
    "added_tokens": st.lists(st.fixed_dictionaries({"id": st.integers(-1, 12) | json_values,
                                                    "content": st.text(max_size=4) | json_values}), max_size=2)
    | json_values,
    "normalizer": json_values, "pre_tokenizer": json_values, "post_processor": json_values,
    "decoder": json_values}) | json_values


@FUZZ
@given(spec=tokenizer_specs, raw=st.none() | st.binary(max_size=40))
def test_tokenizer_json(spec, raw):
    path = in_file("tokenizer.json", json.dumps(spec).encode() if raw is None else raw)
    expect(tokenizer_from_json, path, (TokenizerError, NotImplementedError))


# -- tokenizer.model (protobuf) -------------------------------------------------------------------------------

@FUZZ
@given(raw=st.binary(max_size=200))
def test_sentencepiece_model(raw):
    expect(load_sentencepiece_model, in_file("tokenizer.model", raw), (ValueError, NotImplementedError))


# -- config.json ---------------------------------------------------------------------------------------------

@FUZZ
@given(config=st.fixed_dictionaries({"model_type": st.sampled_from(["llama", "open-llama", 3]),
                                     "num_hidden_layers": json_values, "hidden_size": json_values,
                                     "num_attention_heads": json_values, "rope_scaling": json_values}) | json_values,
       raw=st.none() | st.binary(max_size=40))
def test_config_json(config, raw):
    from tinyllama_ref.config import LlamaConfig

    path = in_file("config.json", json.dumps(config).encode() if raw is None else raw)
    expect(LlamaConfig.from_json, path, ConfigError)


# -- Meta .pth: the zip archive and its pickle -----------------------------------------------------------------

# Pickle opcodes a hostile data.pkl is made of: the globals a state dict uses (and some it must not), persistent
# ids, BUILD, memo reads and writes, containers and numbers; drawn in any order.
PICKLE_PIECES = [b"(", b"t", b"l", b"d", b"}", b"]", b")", b"s", b"u", b"a", b"e", b"b", b"R", b"Q", b"0", b"2",
                 b"N", b"\x88", b"\x89", b"\x85", b"\x86", b"\x87", b"K\x05", b"K\x00", b"J\xff\xff\xff\xff",
                 b"\x8a\x09" + b"\xff" * 9, b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"X\x07\x00\x00\x00storage",
                 b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x001", b"X\x03\x00\x00\x00cpu", b"X\x01\x00\x00\x00w",
                 b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_parameter\n",
                 b"ctorch\nFloatStorage\n", b"ctorch\nBFloat16Storage\n", b"ctorch\nHalfStorage\n",
                 b"ccollections\nOrderedDict\n", b"cos\nsystem\n", b"cbuiltins\ngetattr\n"]
GOOD_PICKLE = (b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\n"
               b"FloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00K\x02K\x03\x86K\x03K\x01\x86\x89tRs.")


@st.composite
def pth_files(draw):
    """A torch.save-like zip: data.pkl (drawn opcodes, or the good pickle with a few pieces spliced in),
    byteorder, and storages stored or deflated, of drawn sizes."""
    import io
    import zipfile

    pieces = draw(st.lists(st.sampled_from(PICKLE_PIECES), max_size=30))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(GOOD_PICKLE)))
        pkl = GOOD_PICKLE[:at] + b"".join(pieces[:3]) + GOOD_PICKLE[at:]
    else:
        pkl = b"\x80\x02" + b"".join(pieces) + b"."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pkl, compress_type=draw(st.sampled_from([zipfile.ZIP_STORED,
                                                                                  zipfile.ZIP_DEFLATED])))
        z.writestr("archive/byteorder", draw(st.sampled_from([b"little"] * 6 + [b"big", b"middle", b""])))
        for key in draw(st.lists(st.sampled_from(["0", "1"]), unique=True, max_size=2)):
            z.writestr(f"archive/data/{key}", draw(st.binary(max_size=40)),
                       compress_type=draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))
    return buf.getvalue()


def read_pth(path):
    from tinyllama_ref.formats.torch_pickle import read_torch_file

    return read_torch_file(path)


@FUZZ
@given(data=pth_files())
def test_pth_archive(data):
    expect(read_pth, in_file("consolidated.00.pth", data), CheckpointError)


def test_the_good_pickle_reads():
    """The fuzzing above starts from a file that reads: w = storage '0' viewed as [2, 3]."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", GOOD_PICKLE)
        z.writestr("archive/data/0", struct.pack("<6f", *range(6)))
    tensors, _ = read_pth(in_file("consolidated.00.pth", buf.getvalue()))
    assert tensors["w"].tolist() == [[0, 1, 2], [3, 4, 5]]


# -- manifest.json of a conformance pack ------------------------------------------------------------------------

def case_hashes():
    from tinyllama_ref.golden_pack import CASE_FILES

    digest = st.sampled_from(["0" * 64, "f" * 63, "g" * 64]) | json_values
    return st.fixed_dictionaries({name: digest for name in CASE_FILES}) | st.dictionaries(st.text(max_size=8), digest)


hashes = case_hashes()
manifests = st.fixed_dictionaries({
    "tolerances": st.dictionaries(st.sampled_from(["float32", "float16"]),
                                  st.fixed_dictionaries({"rtol": json_values | st.floats(), "atol": json_values})
                                  | json_values, max_size=2) | json_values,
    "cases": st.fixed_dictionaries({"mha": st.fixed_dictionaries({"sha256": hashes | json_values}) | json_values})
    | json_values}) | json_values


@FUZZ
@given(manifest=manifests, raw=st.none() | st.binary(max_size=40))
def test_pack_manifest(manifest, raw):
    from tinyllama_ref.golden_pack import PackError, check_case_files, read_manifest

    text = json.dumps(manifest).encode() if raw is None else raw
    path = in_file("manifest.json", text)
    (path.parent / "mha").mkdir()
    (path.parent / "mha" / "config.json").write_text("{}")

    def read(p):
        check_case_files(p.parent / "mha", read_manifest(p.parent / "mha"))

    expect(read, path, PackError)
