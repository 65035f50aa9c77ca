"""safetensors files: read (memory-mapped, bfloat16 rebuilt exactly) and written (atomically).

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON naming each tensor's
dtype, shape and byte range, then the raw bytes. We read it ourselves so that float32 tensors are
memory-mapped (nothing is read until used, nothing is read twice), bfloat16 is rebuilt exactly as
float32 (its 16 bits are the top half of a float32), and a damaged file gets an error that says
which file and which tensor.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..atomic import replacing
from ..errors import CheckpointError

SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,  # BF16: raw bits, see below
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
MAX_TENSORS = 100_000  # per file; a 70B model has about 700 in all


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly: bfloat16 is the top 16 bits of a float32.

    >>> bf16_to_f32(np.array([0x3F80, 0xC000], dtype=np.uint16))
    array([ 1., -2.], dtype=float32)
    """
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even as torch does."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset where tensor data starts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: corrupt safetensors header (header length {n}, file size {size})")
        raw = f.read(n)
    entries = raw.count(b'"data_offsets"')  # one per tensor: counted before the (slower) JSON parse
    if entries > MAX_TENSORS:
        raise CheckpointError(f"{path}: corrupt safetensors header: {entries} entries "
                              f"(more than {MAX_TENSORS} tensors in one file)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep, an integer too long
        raise CheckpointError(f"{path}: corrupt safetensors header: not JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: not a JSON object")
    return header, 8 + n


def read_safetensors(path: str | Path, slicing=None) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file as NumPy arrays, memory-mapped (read-only).

    bfloat16 tensors come back as float32 (converted exactly); everything else keeps its dtype.
    `slicing` (`checkpoint.Slicing`): only a rank's slice of each tensor is read, copied out of the map.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    header, start = read_safetensors_header(path)
    size = path.stat().st_size
    entries = check_layout(header, size - start, str(path))
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    out = {}
    for name, (dtype_name, shape, begin, end) in entries.items():
        arr = np.asarray(mm[start + begin:start + end]).view(SAFETENSORS_DTYPES[dtype_name]).reshape(shape)
        arr = arr if slicing is None else slicing.take(name, arr)
        out[name] = bf16_to_f32(arr) if dtype_name == "BF16" else arr  # arr: a plain view of the map
    return out


def check_layout(header: dict, data_size: int, source: str) -> dict[str, tuple[str, list[int], int, int]]:
    """Check every header entry as the safetensors library does; {name: (dtype, shape, begin, end)}.

    Each entry needs a known dtype, a shape of non-negative integers, and integer `data_offsets`
    whose length matches; taken in order of their offsets, the tensors must tile the data exactly,
    from byte 0 to the end of the file, with no overlap and no gap.
    """
    if len(header) > MAX_TENSORS + 1:
        raise CheckpointError(f"{source}: corrupt safetensors header: {len(header) - 1} entries "
                              f"(more than {MAX_TENSORS} tensors in one file)")
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{source}: corrupt header entry for tensor {name!r}: {info!r}") from None
        if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{source}: tensor {name!r} has unsupported dtype {dtype_name!r}")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise CheckpointError(f"{source}: tensor {name!r} has shape {shape!r}: "
                                  f"expected a list of non-negative integers")
        if not all(type(n) is int and n >= 0 for n in (begin, end)):
            raise CheckpointError(f"{source}: tensor {name!r} has data_offsets {info['data_offsets']!r}: "
                                  f"expected two non-negative integers")
        itemsize = np.dtype(SAFETENSORS_DTYPES[dtype_name]).itemsize
        if math.prod(max(n, 1) for n in shape) * itemsize >= 2**63:  # Python ints: no overflow here
            raise CheckpointError(f"{source}: tensor {name!r} has shape {shape}, too large for any array")
        nbytes = math.prod(shape) * itemsize
        if end - begin != nbytes or end > data_size:
            raise CheckpointError(
                f"{source}: tensor {name!r} ({dtype_name}, shape {shape}) needs {nbytes} bytes at "
                f"[{begin}, {end}) but the file holds {data_size} data bytes: truncated or corrupt file")
        entries[name] = (dtype_name, shape, begin, end)
    expected = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != expected:
            why = "overlaps the tensor before it" if begin < expected else f"leaves a gap after byte {expected}"
            raise CheckpointError(f"{source}: tensor {name!r} at data_offsets [{begin}, {end}) {why}: "
                                  f"corrupt header")
        expected = end
    if expected != data_size:
        raise CheckpointError(f"{source}: the tensors end at data byte {expected} but the file holds {data_size}: "
                              f"corrupt header or trailing bytes")
    return entries


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: dict | None = None,
                      bf16: Iterable[str] = ()) -> None:
    """Write tensors to a safetensors file. Names listed in `bf16` are stored as bfloat16 (rounded).

    The file appears whole or not at all: it is written to a temporary file beside `path`, synced
    to disk, then renamed onto `path`. A reader that has the old file memory-mapped keeps reading
    the old bytes, and a crash leaves the old file (or none), never half a file. The new file gets
    the permissions `open(path, "w")` would give it (0o666 less the umask).
    """
    bf16 = set(bf16)
    names = {np.dtype(v).name: k for k, v in SAFETENSORS_DTYPES.items() if k != "BF16"}
    header: dict = {"__metadata__": {str(k): str(v) for k, v in (metadata or {}).items()}}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if name in bf16:
            data, dtype_name = f32_to_bf16(arr), "BF16"
        else:
            data, dtype_name = np.ascontiguousarray(arr), names[arr.dtype.name]
        header[name] = {"dtype": dtype_name, "shape": list(arr.shape), "data_offsets": [offset, offset + data.nbytes]}
        blobs.append(data)
        offset += data.nbytes
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # align the data to 8 bytes, as the reference writer does
    with replacing(Path(path)) as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for data in blobs:
            f.write(data.reshape(-1).view(np.uint8))  # the array's own bytes, no copy
