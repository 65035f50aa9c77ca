r"""PyTorch `.pth` files read without torch, and without running any code from the file.

`torch.save` (since torch 1.6) writes a zip archive:

    consolidated.00/data.pkl      a pickle of the object (here: a dict of tensor names -> tensors)
    consolidated.00/data/0        the raw bytes of storage "0" (one flat array per storage)
    consolidated.00/data/1        ...
    consolidated.00/byteorder     "little" (absent in files older than torch 2.1: little as well)

In the pickle each tensor is a call `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)` whose `storage` is a *persistent id* `("storage", torch.HalfStorage, "0", "cpu",
numel)` naming an entry of `data/`. A pickle is a small program: its GLOBAL opcode imports any
name and REDUCE calls it, so `pickle.load` of a hostile file can call `os.system`. We therefore
unpickle with `SafeUnpickler`, whose `find_class` answers only the handful of names a state dict
uses, and with our own stand-ins: `_rebuild_tensor_v2` becomes a function that views the storage
bytes as a NumPy array with the tensor's size, strides and offset. Any other name is refused
before it is imported, so nothing in the file runs; and nothing in the file changes this library's
objects: BUILD (which sets attributes) applies only to the OrderedDicts the pickle itself made.

    >>> tensors, bf16_names = read_torch_file("consolidated.00.pth")  # doctest: +SKIP
    >>> tensors["layers.0.attention.wq.weight"].shape  # doctest: +SKIP
    (4096, 4096)

bfloat16 tensors come back as float32 (exactly: bfloat16 is the top half of a float32), their
names in `bf16_names` so a writer can store them as bfloat16 again.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, short
from .safetensors import bf16_to_f32

# torch's storage classes -> the element type of their bytes ("bfloat16": raw uint16 bits, see bf16_to_f32)
STORAGE_DTYPES = {
    "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}
MAX_PICKLE = 64 * 1024 * 1024  # data.pkl of a 70B state dict is well under 1 MB
MAX_BYTEORDER = 16  # "little" or "big"
# what torch.save (before 1.6, "legacy") writes first: a pickled magic number
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


# frozen, yet dataclass gives it a __setstate__ that BUILD would call: SafeUnpickler.load_build refuses that
@dataclass(frozen=True, slots=True)
class StorageType:
    """What `torch.HalfStorage` unpickles to here: a name and an element type, nothing callable."""

    name: str
    dtype: str


@dataclass(frozen=True, slots=True)
class Storage:
    """One flat storage of the archive (`data/<key>`), viewed as its element type."""

    key: str
    dtype: str
    data: np.ndarray  # 1-D, `numel` elements (bfloat16: uint16 bits)


def rebuild_tensor(storage: Storage, storage_offset: int, size, stride, requires_grad=False,
                   backward_hooks=None, metadata=None) -> np.ndarray:
    """Our `torch._utils._rebuild_tensor_v2`: the tensor as a strided view of its storage.

    Element (i, j) of a 2-D tensor sits at storage[offset + i*stride[0] + j*stride[1]], so a
    transposed [2, 4] view of 8 stored values has stride (1, 2). Every index the view can reach is
    checked to lie inside the storage before the view is made.
    """
    if not isinstance(storage, Storage):
        raise CheckpointError(f"a tensor's storage is {type(storage).__name__}, not a storage of the archive")
    ints = lambda v: isinstance(v, (tuple, list)) and all(type(n) is int for n in v)  # noqa: E731
    if type(storage_offset) is not int or not ints(size) or not ints(stride) or len(size) != len(stride):
        raise CheckpointError(f"storage {storage.key!r}: a tensor with offset {short(storage_offset)}, size "
                              f"{short(size)} and stride {short(stride)} is not a valid strided view")
    if storage_offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise CheckpointError(f"storage {storage.key!r}: negative offset, size or stride "
                              f"({storage_offset}, {short(tuple(size))}, {short(tuple(stride))})")
    data = storage.data
    if 0 in size:
        return np.zeros(tuple(size), dtype=np.float32 if storage.dtype == "bfloat16" else data.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))  # the furthest element it reads
    if last >= data.size:
        raise CheckpointError(f"storage {storage.key!r} holds {data.size} elements, but a tensor of size "
                              f"{short(tuple(size))}, stride {short(tuple(stride))} at offset {storage_offset} reads "
                              f"element {last}")
    if overlaps(size, stride):  # a zero stride makes gigabytes of "weights" from one stored float
        raise CheckpointError(f"storage {storage.key!r}: a tensor of size {short(tuple(size))} with stride "
                              f"{short(tuple(stride))} reads some elements more than once; a checkpoint's weights "
                              f"are dense (or sliced) views of their storage")
    itemsize = data.itemsize
    view = np.lib.stride_tricks.as_strided(data[storage_offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride), writeable=False)
    return bf16_to_f32(view) if storage.dtype == "bfloat16" else view


def overlaps(size, stride) -> bool:
    """Whether a strided view may reach one element by two indices: taken by increasing stride, each
    dimension of more than one element must step past the whole extent of the ones before it.

    >>> overlaps((4, 6), (1, 4)), overlaps((4, 6), (6, 1)), overlaps((4096, 4096), (0, 0))
    (False, False, True)
    """
    extent = 1  # elements spanned by the dimensions taken so far
    for s, n in sorted((s, n) for n, s in zip(size, stride) if n > 1):
        if s < extent:
            return True
        extent = s * (n - 1) + extent
    return False


def rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> np.ndarray:
    """Our `torch._utils._rebuild_parameter`: an nn.Parameter is its data."""
    if not isinstance(data, np.ndarray):
        raise CheckpointError(f"a parameter's data is {type(data).__name__}, not a tensor")
    return data


# The only names a state dict's pickle may ask for, and what each becomes here.
ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch", name): StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class SafeUnpickler(pickle._Unpickler):
    """A pickle reader that imports nothing: `find_class` answers from ALLOWED_GLOBALS or refuses.

    `persistent_load` turns a storage id into a `Storage` over the archive's bytes (`read_storage`).
    It extends Python's own pickle reader, not the C one: the C reader sizes its memo by the
    largest index a PUT names, so 5 bytes ("r" and a 4-byte index) could make it allocate gigabytes.
    """

    def __init__(self, file, source: str, read_storage):
        super().__init__(file)
        self.source = source
        self.read_storage = read_storage
        self.storages: dict[str, Storage] = {}
        # each tensor rebuilt from a bfloat16 storage, by id(); held here so that no id is reused for another
        self.bf16: dict[int, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self.rebuild_tensor
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(
                f"{self.source}: the pickle asks for {module}.{name}, which a checkpoint of tensors does not "
                f"need; refusing to load it (unpickling it could run code from the file)") from None

    def load_build(self):
        """BUILD sets the attributes of the object under it: allowed on the OrderedDicts the pickle made (a
        state dict's `_metadata`), refused on anything else, such as the functions find_class hands out."""
        target = self.stack[-2] if len(self.stack) >= 2 else None
        if type(target) is not OrderedDict:
            raise CheckpointError(f"{self.source}: the pickle sets the attributes of a {type(target).__name__}; "
                                  f"only a state dict's own OrderedDicts may be given attributes")
        super().load_build()

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType) and isinstance(pid[2], str) and type(pid[4]) is int):
            raise CheckpointError(f"{self.source}: unexpected persistent id {short(pid)} in the pickle "
                                  f"(expected ('storage', torch.<Type>Storage, key, location, numel))")
        _, kind, key, _, numel = pid
        if key not in self.storages:
            self.storages[key] = Storage(key, kind.dtype, self.read_storage(key, kind.dtype, numel))
        storage = self.storages[key]
        if storage.dtype != kind.dtype:
            raise CheckpointError(f"{self.source}: storage {key!r} is read both as {storage.dtype} and {kind.dtype}")
        return storage

    def rebuild_tensor(self, storage, *args) -> np.ndarray:
        """`rebuild_tensor`, noting which tensors were bfloat16 (they come back as float32)."""
        tensor = rebuild_tensor(storage, *args)
        if storage.dtype == "bfloat16":
            self.bf16[id(tensor)] = tensor
        return tensor


def _entry_bytes(path: Path, info: zipfile.ZipInfo, mm) -> np.ndarray:
    """The bytes of one storage: a view of the memory-mapped file, nothing read until used.

    torch.save stores every storage uncompressed. A compressed one is refused before it is inflated: its
    declared size is the file's word (zip64 allows 2^64 bytes), and inflating it would hold it all in memory.
    """
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"{path}: storage {info.filename!r} is compressed ({info.compress_size} bytes that "
                              f"would inflate to {info.file_size}); torch.save stores storages uncompressed, and "
                              f"this reader maps them from the file, never inflates them: save it again with "
                              f"torch.save")
    # The local header before the data: 30 bytes, then the name and an extra field of its own lengths.
    local = mm[info.header_offset:info.header_offset + 30].tobytes()
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: entry {info.filename!r} has no valid local header: corrupt archive")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > mm.size:
        raise CheckpointError(f"{path}: entry {info.filename!r} runs past the end of the file: truncated archive")
    return mm[start:start + info.file_size]


# what a damaged zip archive can raise while it is read
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, RuntimeError,
              ValueError, KeyError, struct.error, zlib.error)


def read_torch_file(path: str | Path) -> tuple[dict[str, np.ndarray], set[str]]:
    """The state dict saved in a `.pth` file: ({name: array}, names stored as bfloat16).

    Arrays are read-only views of the memory-mapped file where the storage allows it; bfloat16
    tensors are float32 copies. The file must be torch's zip format; the legacy format (torch
    < 1.6), any other pickle, and any pickle that asks for more than tensors are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_MAGIC))
        if head == LEGACY_MAGIC:
            raise CheckpointError(f"{path}: written in torch.save's legacy format (torch < 1.6), which is not "
                                  f"supported: load and save it again with torch >= 1.6")
        raise CheckpointError(f"{path}: not a torch.save zip archive (a .pth file written by torch >= 1.6)")
    try:
        with zipfile.ZipFile(path) as zf:
            state, bf16 = _unpickle_archive(path, zf)
    except CheckpointError:
        raise
    except ZIP_ERRORS as e:  # a damaged archive: bad CRC, an unknown compression, a truncated directory, ...
        raise CheckpointError(f"{path}: a damaged zip archive ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a pickled {type(state).__name__}, not a state dict of tensors")
    tensors: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
            raise CheckpointError(f"{path}: entry {short(name)} of the state dict is a {type(value).__name__}, "
                                  f"not a tensor")
        tensors[name] = value
    return tensors, {name for name, value in tensors.items() if bf16.get(id(value)) is value}


def _unpickle_archive(path: Path, zf: zipfile.ZipFile) -> tuple[object, dict[int, np.ndarray]]:
    """Unpickle `<name>/data.pkl` with `SafeUnpickler`, its storages read from `<name>/data/`."""
    entries = {info.filename: info for info in zf.infolist()}
    pickles = [n for n in entries if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError(f"{path}: expected one <name>/data.pkl in the archive, found "
                              f"{len(pickles)}: not a torch.save file")
    prefix = pickles[0][:-len("data.pkl")]
    for name, limit in ((pickles[0], MAX_PICKLE), (prefix + "byteorder", MAX_BYTEORDER)):  # read whole: bounded
        if name in entries and entries[name].file_size > limit:
            raise CheckpointError(f"{path}: {name} is {entries[name].file_size} bytes, more than a torch.save "
                                  f"file ever holds there ({limit})")
    order = zf.read(entries[prefix + "byteorder"]).decode("ascii", "replace") \
        if prefix + "byteorder" in entries else "little"
    if order not in ("little", "big"):
        raise CheckpointError(f"{path}: {prefix}byteorder is {order!r}, expected 'little' or 'big'")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    source = str(path)

    def read_storage(key: str, dtype: str, numel: int) -> np.ndarray:
        info = entries.get(f"{prefix}data/{key}")
        if info is None:
            raise CheckpointError(f"{source}: storage {key!r} is missing from the archive ({prefix}data/{key})")
        element = np.dtype("uint16" if dtype == "bfloat16" else dtype).newbyteorder("<" if order == "little" else ">")
        raw = _entry_bytes(path, info, mm)
        if numel < 0 or raw.size < numel * element.itemsize:
            raise CheckpointError(f"{source}: storage {key!r} should hold {numel} {dtype} elements "
                                  f"({numel * element.itemsize} bytes) but has {raw.size} bytes")
        data = raw[:numel * element.itemsize].view(element)
        return data if element.isnative else data.astype(element.newbyteorder("="))

    unpickler = SafeUnpickler(io.BytesIO(zf.read(entries[pickles[0]])), source, read_storage)
    try:
        state = unpickler.load()
    except CheckpointError as e:
        raise CheckpointError(str(e) if str(e).startswith(source) else f"{source}: {e}") from None
    except Exception as e:  # a damaged pickle: a truncated stream, a call on a non-callable, ...
        raise CheckpointError(f"{source}: cannot read {pickles[0]} ({type(e).__name__}: {e})") from None
    return state, unpickler.bf16
