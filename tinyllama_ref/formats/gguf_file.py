r"""The GGUF container, read directly: metadata as plain Python values, tensors as views of the file.

GGUF (llama.cpp's format, little-endian, versions 2 and 3) is laid out as

    "GGUF"  version:u32  n_tensors:u64  n_kv:u64
    n_kv    x  key:str  type:u32  value           (an array value is  item_type:u32  n:u64  items)
    n_tensors x name:str  n_dims:u32  ne:u64[n_dims]  ggml_type:u32  offset:u64
    padding to `general.alignment` (32 by default), then the tensor data, each at its offset

where a str is its byte length (u64) followed by UTF-8 bytes, and `ne[0]` is the length of a row
(dimensions run fastest first). Reading the container needs only the standard library and NumPy
(the block arithmetic of quantized tensors is in `ggml_quants`, the next chapter). The header is parsed with `struct`, and the vocabulary's long arrays in bulk, which
is what makes this fast: a 49k-token vocabulary with its merges reads in well under a second.
"""
from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"GGUF"
MAX_ARRAY_DEPTH = 16  # arrays of arrays; llama.cpp's own files use at most 2
DEFAULT_ALIGNMENT = 32

# value types: id -> (name, struct format or None)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALARS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i", FLOAT32: "<f",
            BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}

# ggml tensor types: id -> (name, weights per block, bytes per block)
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}


def ggml_type(kind: int) -> tuple[str, int, int] | None:
    """(name, weights per block, bytes per block) of a ggml type id; newer ids from the gguf package's table."""
    if kind in GGML_TYPES:
        return GGML_TYPES[kind]
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        q = GGMLQuantizationType(kind)
        return (q.name, *GGML_QUANT_SIZES[q])
    except (ImportError, ValueError, KeyError):
        return None


class GGUFError(ValueError):
    """A GGUF file this package cannot read faithfully; the message names the file and the key or tensor."""


@dataclass
class GGUFTensor:
    """One tensor of a GGUF file. `data` is a read-only uint8 view of its bytes, one row per line.

    `shape` is in NumPy's order (slowest first): an HF [out, in] matrix has shape (out, in) here,
    and `data` then has shape (out, bytes per row).
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    data: np.ndarray

    @property
    def type_name(self) -> str:
        return ggml_type(self.ggml_type)[0]


@dataclass
class GGUFFile:
    """A parsed GGUF file: its version, metadata ({key: str, int, float, bool or list}) and tensors."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


class _Cursor:
    """Sequential little-endian reads over the file's bytes, with errors that say where they failed."""

    def __init__(self, buf, source: str):
        self.buf, self.pos, self.source, self.what = buf, 0, source, "the header"
        self.depth = 0  # arrays of arrays: how deep we are

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise GGUFError(f"{self.source}: the file ends at byte {len(self.buf)} inside {self.what}")
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.source}: a string of {n} bytes at byte {self.pos} runs past the end of "
                                  f"the file ({len(self.buf)} bytes), inside {self.what}")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{self.source}: {self.what} holds a string that is not UTF-8 ({e})") from None

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, n = self.take("<I"), self.take("<Q")
            self.depth += 1
            if self.depth > MAX_ARRAY_DEPTH:
                raise GGUFError(f"{self.source}: arrays nested more than {MAX_ARRAY_DEPTH} deep in {self.what}")
            try:
                return self.array(item, n)
            finally:
                self.depth -= 1
        raise GGUFError(f"{self.source}: unknown value type {kind} in {self.what}")

    def array(self, item: int, n: int) -> list:
        if item in _SCALARS and item != BOOL:  # numbers: one bulk read
            dtype = np.dtype(_SCALARS[item])
            end = self.pos + n * dtype.itemsize
            if end > len(self.buf):
                raise GGUFError(f"{self.source}: an array of {n} values runs past the end of the file, "
                                      f"inside {self.what}")
            out = np.frombuffer(self.buf, dtype, n, self.pos).tolist()
            self.pos = end
            return out
        return [self.value(item) for _ in range(n)]


def read_gguf_file(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header; tensor bytes stay in the file (memory-mapped) until used."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    source = str(path)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 24:
            raise GGUFError(f"{source}: {size} bytes is too short for a GGUF header")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    cur = _Cursor(memoryview(buf), source)
    if bytes(buf[:4]) != MAGIC:
        raise GGUFError(f"{source}: does not start with the GGUF magic (found {bytes(buf[:4])!r})")
    cur.pos = 4
    version = cur.take("<I")
    if version not in (2, 3):
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        why = " (a big-endian file?)" if swapped in (2, 3) else ""
        raise GGUFError(f"{source}: GGUF version {version}{why} is not supported (versions 2 and 3 are)")
    n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        cur.what = f"metadata entry {i}"
        key = cur.string()
        cur.what = f"metadata key {key!r}"
        metadata[key] = cur.value(cur.take("<I"))

    infos, names = [], set()
    for i in range(n_tensors):
        cur.what = f"tensor info {i}"
        name = cur.string()
        if name in names:
            raise GGUFError(f"{source}: tensor {name!r} appears twice")  # as llama.cpp refuses it
        names.add(name)
        cur.what = f"the info of tensor {name!r}"
        n_dims = cur.take("<I")
        ne = [cur.take("<Q") for _ in range(n_dims)]
        infos.append((name, ne, cur.take("<I"), cur.take("<Q")))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{source}: general.alignment is {alignment!r}, not a power of two")
    start = -(-cur.pos // alignment) * alignment
    tensors, expected = [], 0
    for name, ne, kind, offset in infos:
        # as llama.cpp: each tensor starts where the one before it ends, padded to the alignment; so no two
        # tensors share bytes and no offset is off by a few bytes
        if offset != expected:
            raise GGUFError(f"{source}: tensor {name!r} is at offset {offset} of the data, but the tensors before "
                            f"it end at {expected} (padded to {alignment} bytes): the tensors must follow each "
                            f"other in order, as llama.cpp requires")
        tensors.append(_tensor(buf, start, name, ne, kind, offset, source))
        expected += -(-tensors[-1].data.nbytes // alignment) * alignment
    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors)


def _tensor(buf, start: int, name: str, ne: list[int], kind: int, offset: int, source: str) -> GGUFTensor:
    """A view of one tensor's bytes, shaped [rows..., bytes per row]."""
    known = ggml_type(kind)
    if known is None:
        raise GGUFError(f"{source}: tensor {name!r} has ggml type {kind}, which this reader does not know")
    type_name, block, block_bytes = known
    if not ne or ne[0] % block:
        raise GGUFError(f"{source}: tensor {name!r} ({type_name}) has rows of {ne[0] if ne else 0} values, "
                              f"not a multiple of its block size {block}")
    row_bytes = ne[0] // block * block_bytes
    shape = tuple(reversed(ne))  # NumPy order: slowest first
    n_bytes = row_bytes * math.prod(shape[:-1])  # Python ints: a lying shape cannot wrap around
    begin = start + offset
    if begin + n_bytes > len(buf):
        raise GGUFError(f"{source}: tensor {name!r} needs bytes [{begin}, {begin + n_bytes}) but the file "
                              f"has {len(buf)}: it is truncated")
    data = np.frombuffer(buf, np.uint8, n_bytes, begin).reshape(*shape[:-1], row_bytes)
    return GGUFTensor(name=name, shape=shape, ggml_type=kind, data=data)
