"""Our GGUF container reader (`tinyllama_ref.formats.gguf_file`): every value type, tensor views, and bad files.

Files are written two ways: by hand with `struct` here (so that the reader is tested without the
`gguf` package, which it does not need), and by llama.cpp's own `gguf.GGUFWriter`, whose reader
`gguf.GGUFReader` must then agree with ours on every key and every tensor byte.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from tinyllama_ref.formats.gguf_file import GGUFError, read_gguf_file


def gguf_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def gguf_header(version: int, n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def hand_written_gguf(path: Path, version: int = 3, alignment: int | None = None, h_type: int = 1) -> Path:
    """A GGUF file with one of each value type and two tensors (F32 [2, 3] and F16 [4]), by hand."""
    kv = [
        ("general.architecture", 8, gguf_string("llama")),
        ("u8", 0, struct.pack("<B", 200)), ("i8", 1, struct.pack("<b", -5)),
        ("u16", 2, struct.pack("<H", 60000)), ("i16", 3, struct.pack("<h", -300)),
        ("u32", 4, struct.pack("<I", 4_000_000_000)), ("i32", 5, struct.pack("<i", -7)),
        ("f32", 6, struct.pack("<f", 0.5)), ("flag", 7, struct.pack("<?", True)),
        ("u64", 10, struct.pack("<Q", 2**40)), ("i64", 11, struct.pack("<q", -(2**40))),
        ("f64", 12, struct.pack("<d", 1e-300)),
        ("ints", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", 1, -2, 3)),
        ("words", 9, struct.pack("<IQ", 8, 3) + b"".join(gguf_string(w) for w in ("a", "Ġb", "日本"))),
        ("flags", 9, struct.pack("<IQ", 7, 2) + struct.pack("<2?", False, True)),
        ("nested", 9, struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 4, 1) + struct.pack("<I", 9)
         + struct.pack("<IQ", 4, 2) + struct.pack("<2I", 8, 7)),
    ]
    if alignment is not None:
        kv.append(("general.alignment", 4, struct.pack("<I", alignment)))
    align = alignment or 32
    w = np.arange(6, dtype="<f4").reshape(2, 3)
    h = np.array([1.0, -2.0, 0.25, 65504.0], dtype="<f2")
    head = gguf_header(version, n_tensors=2, n_kv=len(kv))
    head += b"".join(gguf_string(k) + struct.pack("<I", t) + v for k, t, v in kv)
    head += gguf_string("w") + struct.pack("<I", 2) + struct.pack("<2Q", 3, 2) + struct.pack("<IQ", 0, 0)
    h_offset = -(-w.nbytes // align) * align
    head += gguf_string("h") + struct.pack("<I", 1) + struct.pack("<Q", 4) + struct.pack("<IQ", h_type, h_offset)
    head += b"\0" * (-len(head) % align)
    data = w.tobytes() + b"\0" * (h_offset - w.nbytes) + h.tobytes()
    path.write_bytes(head + data)
    return path


@pytest.mark.parametrize("alignment", [None, 64])
def test_every_value_type_and_tensor_reads_back(tmp_path, alignment):
    f = read_gguf_file(hand_written_gguf(tmp_path / "a.gguf", alignment=alignment))
    m = f.metadata
    assert f.version == 3 and m["general.architecture"] == "llama"
    assert (m["u8"], m["i8"], m["u16"], m["i16"], m["u32"], m["i32"]) == (200, -5, 60000, -300, 4_000_000_000, -7)
    assert (m["f32"], m["flag"], m["u64"], m["i64"], m["f64"]) == (0.5, True, 2**40, -(2**40), 1e-300)
    assert m["ints"] == [1, -2, 3] and m["words"] == ["a", "Ġb", "日本"] and m["flags"] == [False, True]
    assert m["nested"] == [[9], [8, 7]]
    w, h = f.tensors
    assert (w.name, w.shape, w.type_name, h.shape, h.type_name) == ("w", (2, 3), "F32", (4,), "F16")
    np.testing.assert_array_equal(w.data.view("<f4"), np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(h.data.view("<f2"), np.array([1.0, -2.0, 0.25, 65504.0], np.float16))


def test_tensors_are_views_of_the_file_not_copies(tmp_path):
    (w, _) = read_gguf_file(hand_written_gguf(tmp_path / "a.gguf")).tensors
    assert not w.data.flags.writeable and not w.data.flags.owndata


def test_bad_files_say_what_and_where(tmp_path):
    good = hand_written_gguf(tmp_path / "good.gguf").read_bytes()
    cases = {
        "magic": (b"GGML" + good[4:], "does not start with the GGUF magic"),
        "v1": (gguf_header(1, 0, 0), r"GGUF version 1 is not supported"),
        "big_endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), r"a big-endian file\?"),
        "short": (good[:10], "too short for a GGUF header"),
        "cut_in_metadata": (good[:120], "the file ends at byte 120 inside metadata"),
        "cut_in_data": (good[:-4], "tensor 'h' needs bytes .* it is truncated"),
        "bad_type": (hand_written_gguf(tmp_path / "t99.gguf", h_type=99).read_bytes(), "tensor 'h' has ggml type 99"),
        "string_too_long": (good[:24] + struct.pack("<Q", 10**9) + good[32:], "a string of 1000000000 bytes"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        with pytest.raises(GGUFError, match=message):
            read_gguf_file(path)
        assert str(path) in str(_error(path)), name
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        read_gguf_file(tmp_path / "missing.gguf")
    not_utf8 = good.replace(gguf_string("Ġb"), struct.pack("<Q", 3) + b"\xff\xfe\xfd", 1)
    (tmp_path / "latin.gguf").write_bytes(not_utf8)
    with pytest.raises(GGUFError, match="metadata key 'words' holds a string that is not UTF-8"):
        read_gguf_file(tmp_path / "latin.gguf")


def _error(path: Path) -> GGUFError:
    try:
        read_gguf_file(path)
    except GGUFError as e:
        return e
    raise AssertionError(f"{path} read without error")


def test_agrees_with_llama_cpp_reader_on_a_file_written_by_its_writer(tmp_path):
    gguf = pytest.importorskip("gguf", reason="the gguf package (llama.cpp's writer, a test-only dependency) is not installed: pip install -e '.[parity]'")
    path = tmp_path / "w.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for kind in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"):
        getattr(writer, f"add_{kind}")(f"k.{kind}", 7 if kind.startswith("u") else -7)
    writer.add_float32("k.f32", 1.5)
    writer.add_float64("k.f64", -2.25)
    writer.add_bool("k.bool", False)
    writer.add_string("k.str", "Ġhello ▁world")
    writer.add_array("k.ints", [3, 1, 4, 1, 5])
    writer.add_array("k.floats", [0.5, -1.0])
    writer.add_array("k.strs", ["x", "ÿ", "<|im_end|>"])
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((5, 64), dtype=np.float32),
               "b": rng.standard_normal((3, 32)).astype(np.float16)}
    for name, arr in tensors.items():
        writer.add_tensor(name, arr)
    writer.add_tensor("q", gguf.quants.quantize(tensors["a"], gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours, theirs = read_gguf_file(path), gguf.GGUFReader(path)
    expected = {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata.keys() == expected.keys()
    for key, value in expected.items():
        assert ours.metadata[key] == pytest.approx(value) if isinstance(value, float) else \
            ours.metadata[key] == value, key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors] == ["a", "b", "q"]
    for o, t in zip(ours.tensors, theirs.tensors):
        assert o.shape == tuple(int(n) for n in reversed(t.shape)) and o.ggml_type == int(t.tensor_type)
        assert o.data.tobytes() == np.asarray(t.data).tobytes(), o.name


def test_block_sizes_agree_with_llama_cpp_table():
    """Our table of ggml types (name, weights per block, bytes per block) is gguf's own, for every id it lists."""
    constants = pytest.importorskip("gguf.constants", reason="the gguf package is not installed")
    from tinyllama_ref.formats.gguf_file import GGML_TYPES

    for q, sizes in constants.GGML_QUANT_SIZES.items():
        assert GGML_TYPES.get(q.value) == (q.name, *sizes), q.name
