"""A strict stand-in for CuPy, backed by NumPy: the GPU code path, proven on a machine without a GPU.

Installed as `sys.modules["cupy"]` for one test (the `backend` fixture in conftest.py), it is what the
package's own lazy `import cupy` and `backend.get_module("cupy")` find. Its arrays are a type of their
own whose class lives in module "cupy" (so `backend.is_cupy_array` is true for them), and it is as
strict as CuPy where CuPy is strict:

- no implicit conversion to NumPy: `np.asarray(x)` and `x.__array__()` raise TypeError;
- no mixing: arithmetic, ufuncs, functions, indexing or assignment that meet a host `numpy.ndarray`
  raise TypeError (Python scalars and NumPy scalar types are fine, as in CuPy);
- reductions return 0-d device arrays, not host scalars, so reading one is an explicit transfer.

Every crossing is counted in `transfers`: device -> host (`.get()`, `asnumpy`, `int()`, `float()`,
`bool()`, `.item()`, `.tolist()`, `repr`, and the implicit syncs of ops whose output size depends on the
data: boolean-mask indexing, `nonzero`, `argwhere`, `unique`) and host -> device (`asarray`/`array` of host
data, a Python list used as an index or assigned into an array). Tests read the counts, reset them, and
print `transfers.log` (where each one happened) when a budget is exceeded.

`fuse` returns the function itself, so a fused kernel runs as the Python it is written in; `cuda` and
`random` hold what the package and the benchmarks call; `cupyx.distributed` (installed as sys.modules
"cupyx" and "cupyx.distributed" where a test needs it) does NCCL's collectives with MPI underneath. What the double cannot show is speed, memory,
or CUDA's own numerics: real CuPy runs the same tests when a GPU is present.
"""
from __future__ import annotations

import os
import sys
import types

import numpy as np

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly.")  # CuPy's own message


class Transfers:
    """Counts of host<->device crossings since the last `reset()`, with where each one came from."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.to_device = self.to_host = 0  # how many copies
        self.bytes_to_device = self.bytes_to_host = 0  # how much they moved
        self.log: list[str] = []

    def count(self, direction: str, what: str, nbytes: int = 0) -> None:
        setattr(self, direction, getattr(self, direction) + 1)
        setattr(self, f"bytes_{direction}", getattr(self, f"bytes_{direction}") + nbytes)
        self.log.append(f"{'up  ' if direction == 'to_device' else 'down'} {what} ({nbytes} B) at {_caller()}")

    def __repr__(self) -> str:
        return f"Transfers(to_device={self.to_device}, to_host={self.to_host})"

    def report(self) -> str:
        return "\n".join([repr(self)] + self.log)


transfers = Transfers()


def _caller() -> str:
    """file:line of the first frame outside this module: who asked for the transfer."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename == __file__:
        f = f.f_back
    return f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno}" if f else "?"


def _refuse_host(where: str):
    raise TypeError(f"{where}: a host numpy.ndarray meets a device array "
                    f"(CuPy: Unsupported type <class 'numpy.ndarray'>); copy it up with cupy.asarray first")


def _operand(x, where: str):
    """The NumPy array behind a device array; scalars pass; host arrays are refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        _refuse_host(where)
    if isinstance(x, (list, tuple)):
        return type(x)(_operand(v, where) for v in x)
    return x


def _wrap(r):
    """Results stay on the device: arrays and NumPy scalars become device arrays (0-d for a scalar)."""
    if isinstance(r, np.ndarray):
        return ndarray(r)
    if isinstance(r, np.generic):
        return ndarray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


DATA_DEPENDENT = {"nonzero", "argwhere", "flatnonzero", "unique", "compress", "extract"}  # CuPy syncs for the size


def _device_function(fn, name: str):
    def call(*args, **kwargs):
        args, kwargs = _operand(list(args), name), {k: _operand(v, name) for k, v in kwargs.items()}
        if name in DATA_DEPENDENT:
            transfers.count("to_host", f"{name} (output size read back)", 8)
        return _wrap(fn(*args, **kwargs))

    call.__name__ = name
    if isinstance(fn, np.ufunc):  # CuPy's ufuncs have NumPy's in-place `at` (cupy.add.at: a scatter-add)
        call.at = lambda a, indices, *b: fn.at(_operand(a, f"{name}.at"), _index(indices, f"{name}.at"),
                                               *_operand(list(b), f"{name}.at"))
    return call


def _index(key, where="indexing"):
    if isinstance(key, tuple):
        return tuple(_index(k, where) for k in key)
    if isinstance(key, ndarray):
        if key._a.dtype == bool:
            transfers.count("to_host", "boolean-mask index (its count read back)", 8)
        return key._a
    if isinstance(key, np.ndarray):
        _refuse_host(where)
    if isinstance(key, list):
        transfers.count("to_device", "a Python list as an index", 8 * len(key))
    return key


def _binary(ufunc, reflected=False):
    def op(self, other):
        if not isinstance(other, (ndarray, np.ndarray, int, float, complex, bool, np.generic)):
            return NotImplemented
        o = _operand(other, f"operator {ufunc.__name__}")
        return _wrap(ufunc(o, self._a) if reflected else ufunc(self._a, o))

    return op


def _inplace(ufunc):
    def op(self, other):
        ufunc(self._a, _operand(other, f"in-place {ufunc.__name__}"), out=self._a)
        return self

    return op


class ndarray:
    """A device array: NumPy inside, strict outside."""

    __slots__ = ("_a",)
    __hash__ = None

    def __init__(self, a: np.ndarray):
        self._a = a

    # -- device -> host: explicit, counted -----------------------------------------------
    def get(self) -> np.ndarray:
        transfers.count("to_host", ".get()", self._a.nbytes)
        return self._a.copy()

    def _read(self, what: str):
        transfers.count("to_host", what, self._a.nbytes)
        return self._a

    def item(self, *args):
        return self._read(".item()").item(*args)

    def tolist(self):
        return self._read(".tolist()").tolist()

    def tobytes(self, *args, **kwargs):
        return self._read(".tobytes()").tobytes(*args, **kwargs)

    def __int__(self):
        return int(self._read("int()"))

    def __index__(self):
        return self._read("operator.index()").__index__()

    def __float__(self):
        return float(self._read("float()"))

    def __complex__(self):
        return complex(self._read("complex()"))

    def __bool__(self):
        return bool(self._read("bool()"))

    def __repr__(self):
        return f"array({np.array2string(self._read('repr()'), separator=', ')}, device='double')"

    __str__ = __repr__

    def __format__(self, spec):
        return format(self._read("format()").item() if self._a.ndim == 0 else self._a, spec)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __len__(self):
        return len(self._a)

    def __contains__(self, value):
        return bool((self == value).any())  # one sync, as in CuPy

    # -- staying on the device --------------------------------------------------------------
    def __getattr__(self, name):
        if name.startswith("__"):  # __array_interface__, __dlpack__, ...: no back doors to host memory
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return _device_function(attr, name)
        return _wrap(attr)

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, list):
            transfers.count("to_device", "a Python list assigned into an array", 8 * len(value))
        self._a[_index(key, "assignment")] = _operand(value, "assignment")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = _operand(list(inputs), f"numpy.{ufunc.__name__}")
        kwargs = {k: _operand(v, f"numpy.{ufunc.__name__}") for k, v in kwargs.items()}
        return _wrap(getattr(ufunc, method)(*inputs, **kwargs))

    def __array_function__(self, func, types_, args, kwargs):  # CuPy dispatches NumPy functions to its own
        return _device_function(func, func.__name__)(*args, **kwargs)

    __add__, __radd__ = _binary(np.add), _binary(np.add, True)
    __sub__, __rsub__ = _binary(np.subtract), _binary(np.subtract, True)
    __mul__, __rmul__ = _binary(np.multiply), _binary(np.multiply, True)
    __truediv__, __rtruediv__ = _binary(np.true_divide), _binary(np.true_divide, True)
    __floordiv__, __rfloordiv__ = _binary(np.floor_divide), _binary(np.floor_divide, True)
    __mod__, __rmod__ = _binary(np.remainder), _binary(np.remainder, True)
    __pow__, __rpow__ = _binary(np.power), _binary(np.power, True)
    __matmul__, __rmatmul__ = _binary(np.matmul), _binary(np.matmul, True)
    __and__, __rand__ = _binary(np.bitwise_and), _binary(np.bitwise_and, True)
    __lshift__, __rshift__ = _binary(np.left_shift), _binary(np.right_shift)
    __or__, __ror__ = _binary(np.bitwise_or), _binary(np.bitwise_or, True)
    __xor__, __rxor__ = _binary(np.bitwise_xor), _binary(np.bitwise_xor, True)
    __lt__, __le__ = _binary(np.less), _binary(np.less_equal)
    __gt__, __ge__ = _binary(np.greater), _binary(np.greater_equal)
    __eq__, __ne__ = _binary(np.equal), _binary(np.not_equal)
    __iadd__, __isub__, __imul__ = _inplace(np.add), _inplace(np.subtract), _inplace(np.multiply)
    __itruediv__, __iand__, __ior__ = _inplace(np.true_divide), _inplace(np.bitwise_and), _inplace(np.bitwise_or)

    def __neg__(self):
        return ndarray(-self._a)

    def __pos__(self):
        return ndarray(+self._a)

    def __abs__(self):
        return ndarray(abs(self._a))

    def __invert__(self):
        return ndarray(~self._a)


ndarray.__module__ = "cupy"  # what backend.is_cupy_array looks at, as for cupy.ndarray (cupy._core.core)


# -- host -> device: explicit, counted ---------------------------------------------------------

def asarray(a, dtype=None, order=None, **kwargs):
    """A device array: a no-op for one already there (a cast on the device if dtype differs), else a copy up."""
    if isinstance(a, ndarray):
        return a if dtype is None or a._a.dtype == np.dtype(dtype) else ndarray(a._a.astype(dtype))
    host = np.asarray(a, dtype=dtype, order=order)  # a list holding device arrays refuses here (__array__)
    transfers.count("to_device", f"asarray of host {type(a).__name__}", host.nbytes)
    return ndarray(np.array(host, copy=True))


def array(a, dtype=None, copy=True, **kwargs):
    if isinstance(a, ndarray):
        return ndarray(np.array(a._a, dtype=dtype, copy=copy))
    return asarray(a, dtype=dtype)


def asnumpy(a, **kwargs):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


def fuse(*args, **kwargs):
    """`cupy.fuse` stand-in: the function itself, so the fused kernel runs as the Python it is written in."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda fn: fn


class _Generator:
    """`cupy.random.default_rng(seed)`: draws made on the device (other numbers than CuPy's, same shapes)."""

    def __init__(self, seed=None):
        self._rng = np.random.default_rng(seed)

    def __getattr__(self, name):
        return _device_function(getattr(self._rng, name), f"random.{name}")


random = types.SimpleNamespace(default_rng=_Generator)


class _Device:
    def __init__(self, device_id: int = 0):
        self.id = device_id

    def synchronize(self) -> None:
        pass

    def use(self) -> None:
        pass


def _host_memory() -> tuple[int, int]:
    """(free, total) bytes of host memory: what the double's "device" really has."""
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return os.sysconf("SC_AVPHYS_PAGES") * size, pages * size


cuda = types.SimpleNamespace(
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                  getDeviceProperties=lambda i: {"name": b"cupy double (NumPy)"},
                                  memGetInfo=lambda: _host_memory()),  # (free, total): the host's, NumPy's
    Device=_Device)


class _NCCLBackend:
    """`cupyx.distributed.NCCLBackend` with MPI underneath (mpi4py on the arrays' NumPy insides): what NCCL
    does on GPUs, so a tensor-parallel model on the double runs its real collectives across MPI ranks."""

    def __init__(self, n_devices: int, rank: int, **kwargs):
        from mpi4py import MPI

        self._mpi, self._sum = MPI.COMM_WORLD, MPI.SUM
        if (self._mpi.Get_size(), self._mpi.Get_rank()) != (n_devices, rank):
            raise ValueError(f"rank {rank} of {n_devices} does not match MPI's {self._mpi.Get_rank()} of "
                             f"{self._mpi.Get_size()}")

    @staticmethod
    def _inside(*arrays) -> list:
        for a in arrays:
            if not isinstance(a, ndarray):
                raise TypeError(f"NCCL moves device arrays, got {type(a).__name__}")
            if not a._a.flags.c_contiguous:
                raise RuntimeError("NCCL requires arrays to be either c- or f-contiguous")  # CuPy's own message
        return [a._a for a in arrays]

    def all_reduce(self, in_array, out_array, op="sum", stream=None):
        src, dst = self._inside(in_array, out_array)
        wide = src.astype(np.float32) if src.dtype == np.float16 else src  # NCCL sums float16; MPI cannot
        total = np.empty_like(wide)
        self._mpi.Allreduce(wide, total, op=self._sum)
        dst[...] = total

    def all_gather(self, in_array, out_array, count, stream=None):
        src, dst = self._inside(in_array, out_array)
        self._mpi.Allgather(src.reshape(-1)[:count].view(np.uint8), dst.reshape(-1).view(np.uint8))


def _init_process_group(n_devices, rank, *, backend="nccl", host=None, port=None, use_mpi=False):
    return _NCCLBackend(n_devices, rank)


cupyx = types.ModuleType("cupyx")  # sys.modules["cupyx"] and ["cupyx.distributed"] where a test needs them
cupyx.distributed = types.ModuleType("cupyx.distributed")
cupyx.distributed.init_process_group = _init_process_group
cupyx.distributed.NCCLBackend = _NCCLBackend


def __getattr__(name):
    """Everything else of NumPy's namespace, as device functions (dtypes and constants as they are)."""
    obj = getattr(np, name)
    if isinstance(obj, type) or not callable(obj):
        return obj
    return _device_function(obj, name)
