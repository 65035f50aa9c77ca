"""The array-module switch: one code path for NumPy (CPU) and CuPy (CUDA).

Layer code never imports an array library by name. It asks `xp_of(x)` for the
module that owns its input, so the same function runs on both. CuPy is imported
only when someone asks for it, so CPU users never need it installed.
"""
from __future__ import annotations

import os

import numpy as np

BACKENDS = ("numpy", "cupy")
ENV_VAR = "TINYLLAMA_BACKEND"


def is_cupy_array(x) -> bool:
    """True for a cupy.ndarray, found without importing cupy."""
    return type(x).__module__.split(".")[0] == "cupy"


def xp_of(*arrays):
    """The array module (numpy or cupy) that owns the given arrays.

    >>> xp_of(np.zeros(3)) is np
    True
    """
    for a in arrays:
        if is_cupy_array(a):
            import cupy  # only reachable when a cupy array already exists

            return cupy
    return np


def resolve_backend(name: str | None = None) -> str:
    """The backend name to use: the argument, else $TINYLLAMA_BACKEND, else "numpy"."""
    name = name or os.environ.get(ENV_VAR) or "numpy"
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}"
                         f" (from the argument or ${ENV_VAR})")
    return name


def get_module(name: str | None = None):
    """The array module for a backend name, with a clear error when CuPy or a GPU is missing."""
    name = resolve_backend(name)
    if name == "numpy":
        return np
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "backend='cupy' needs CuPy, which is not installed: "
            "pip install -e \".[gpu]\" in a clone (or the cupy-cudaXXx wheel for your CUDA)") from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # cupy raises CUDARuntimeError when no driver is present
        raise RuntimeError(f"backend='cupy' needs a CUDA GPU, but CUDA reports: {e}") from e
    if n == 0:
        raise RuntimeError("backend='cupy' needs a CUDA GPU, but none is visible")
    return cupy


def to_numpy(x):
    """A NumPy copy of an array from either module (no-op for NumPy arrays)."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one GPU (used by tests to skip with a reason)."""
    try:
        get_module("cupy")
        return True
    except RuntimeError:
        return False


def available_memory(xp=np) -> int | None:
    """Bytes of memory available to a new allocation, or None: the device's free memory on CuPy, else
    the host's (Linux MemAvailable, else free pages)."""
    if xp is not np:
        try:
            return int(xp.cuda.runtime.memGetInfo()[0])
        except Exception:  # no runtime query: no guard rather than a wrong one
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None



_BLAS_THREADS = ("openblas_{}_num_threads", "openblas_{}_num_threads64_", "scipy_openblas_{}_num_threads",
                 "scipy_openblas_{}_num_threads64_")  # NumPy's wheels bundle OpenBLAS under a prefixed name


def blas_threads():
    """(get, set) of the loaded OpenBLAS's thread count, found in this process's mapped libraries; None when
    there is none (another BLAS, or no /proc)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _BLAS_THREADS:
            if hasattr(lib, name.format("set")) and hasattr(lib, name.format("get")):
                return getattr(lib, name.format("get")), getattr(lib, name.format("set"))
    return None


_MALLOC = {"asked": False, "kept": False}


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next arrays instead of handing it back to the system.

    A forward or a training step allocates and frees the same arrays of a few MB again and again. By default
    glibc maps each one afresh and unmaps it when freed, so its pages fault in one by one on every call: 45,000
    page faults in a 128-token prefill of SmolLM2 (a quarter of its time), 34,000 in a training step of the
    bundled model. From here on, blocks up to 32 MB come from the heap, and up to 1 GiB of freed heap is kept.
    Called once per process by `build_model` on NumPy (TINYLLAMA_KEEP_FREED_MEMORY=0 leaves malloc as it is).
    Returns whether the settings are in force: False where the C library is not glibc.
    """
    import ctypes

    if _MALLOC["asked"]:
        return _MALLOC["kept"]
    _MALLOC["asked"] = True
    if os.environ.get("TINYLLAMA_KEEP_FREED_MEMORY", "1").strip() == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
        _MALLOC["kept"] = bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
                               and libc.mallopt(M_TOP_PAD, 64 << 20))
    except (OSError, AttributeError):
        pass
    return _MALLOC["kept"]
