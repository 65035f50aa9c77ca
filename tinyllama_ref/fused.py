r"""Fused kernels for the GPU: the decoder layer's pointwise steps, each compiled into one CUDA kernel.

On CuPy every array operation is a kernel launch, and a batch-1 decoding step is made of small ones:
the matrix-vector products read the weights, and around them dozens of elementwise operations per
layer each pay a launch (and a round trip through device memory) for a few thousand numbers.
`cupy.fuse` traces a Python function of elementwise operations once and compiles it into a single
kernel. The functions below are the pointwise parts of `llama.py`, written so that the traced code
*is* the book's code where it can be:

- `rms_norm`: the mean of squares stays a reduction; the scaling after it, $w \odot x/\sqrt{v+\epsilon}$
  with its casts, is one kernel (instead of five);
- `apply_rope`: both halves of the rotation, $(x_1 \cos - x_2 \sin,\ x_2 \cos + x_1 \sin)$, in one kernel
  (instead of a negation, a concatenation, two products and a sum), then one concatenation;
- `silu_mul`: SwiGLU's $\mathrm{SiLU}(g) \odot u$ in one kernel (instead of five): `llama.silu`'s formula
  with its 1 handed in as an argument of the array's dtype.

Softmax is left as the book writes it: its two reductions are not elementwise, and fusing its one
elementwise step would need a second copy of the attention function for one launch saved.

`KERNELS` hands them to the one decoder layer of `llama.py` as its `rms_norm`, `apply_rope` and
`act_mul` (`model.layer_ops`, on CuPy only, unless the model is built with `fused=False`; the CLI's
default for that is `TINYLLAMA_FUSED`). On NumPy an `elementwise_kernel` is its Python function; on the
CuPy double of the tests, whose `fuse` returns the function itself, the model gives logits
bit-identical to the book's (tests/test_fused.py). On a real GPU the kernels
round in their own order: equal to the plain functions within float tolerance, and **not yet run on a
GPU** (see docs/guides/gpu.md).

**A fused kernel cannot crash the GPU path.** On first use each compiled kernel is run beside its plain
function on the same arguments; if compiling or running it fails, or its result differs in shape, dtype
or value, every kernel falls back to its plain function for the rest of the process, with one
`RuntimeWarning`, and `path()` says so. That guards CuPy's known limits: the outputs of a fused function
that returns a tuple are broadcast to one shape (cupy issues 8198, 8381; `_rotate`'s two halves have one
shape anyway), and a Python scalar inside a fused function promotes float32 to float64 (cupy 9400; the
scalars here come in as arguments of the array's dtype, as `eps` and `one`).
"""
from __future__ import annotations

import functools
import warnings

import numpy as np

from .backend import xp_of
from .llama import compute_dtype

FUSION = {"compiled": {}, "failed": None}  # {(fn, module): kernel} checked on first use; why fusion was abandoned


def elementwise_kernel(fn):
    """`fn` compiled by its array module's `fuse` (made and checked on first use, once per module); on NumPy,
    or once a fused kernel has failed, `fn` itself.

    Nothing here imports CuPy: the module comes from the arguments (`xp_of`), as everywhere else.
    """

    @functools.wraps(fn)
    def run(*args):
        xp = xp_of(*args)
        if xp is np or FUSION["failed"]:
            return fn(*args)
        kernel = FUSION["compiled"].get((fn, xp))
        return kernel(*args) if kernel is not None else _first_use(fn, xp, args)

    return run


def _first_use(fn, xp, args):
    """Compile `fn`, run it, and keep it if it gives what `fn` gives; else fall back (`_fall_back`)."""
    try:
        kernel = xp.fuse(fn)
        got = kernel(*args)
        problem = None if kernel is fn else _differs(got, fn(*args))  # a fuse that compiles nothing: as written
    except Exception as e:  # any failure of CuPy's tracer or compiler: the plain kernels are always there
        problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        _fall_back(fn.__name__, problem)
        return fn(*args)
    FUSION["compiled"][(fn, xp)] = kernel
    return got


def _differs(got, want) -> str | None:
    """How a fused result differs from the plain one (count, shape, dtype, values), or None."""
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    if not isinstance(got, tuple) or len(got) != len(want):
        return f"{len(want)} outputs expected"
    for g, w in zip(got, want):
        if g.shape != w.shape:
            return f"output shape {tuple(g.shape)}, expected {tuple(w.shape)} (cupy 8198: tuple outputs broadcast)"
        if g.dtype != w.dtype:
            return f"output dtype {g.dtype}, expected {w.dtype} (cupy 9400: a Python scalar promotes)"
        tol = 32 * float(np.finfo(w.dtype).eps)  # rounding in another order, not another result
        if not bool(xp_of(w).allclose(g, w, rtol=tol, atol=tol)):  # one read back, on first use only
            return f"values differ from the plain function's beyond {tol:.1e}"
    return None


def _fall_back(name: str, problem: str) -> None:
    FUSION["failed"] = f"{name}: {problem}"
    warnings.warn(f"CuPy's fused kernel {name} failed on first use ({problem}); the GPU path runs the plain "
                  f"kernels from now on: the same results, more kernel launches", RuntimeWarning, stacklevel=4)


def path() -> str:
    """Which pointwise kernels ran on CuPy in this process: "fused (N kernels)", "plain (...why...)", or "none"."""
    if FUSION["failed"]:
        return f"plain (a fused kernel failed: {FUSION['failed']})"
    return f"fused ({len(FUSION['compiled'])} kernels)" if FUSION["compiled"] else "none"


@elementwise_kernel
def _rms_scale(x32, variance, weight, eps):
    return weight * (x32 / xp_of(x32).sqrt(variance + eps)).astype(weight.dtype)


def rms_norm(x, weight, eps: float):
    """`llama.rms_norm` with everything after the mean of squares in one kernel (output in weight's dtype)."""
    x32 = x.astype(compute_dtype(x.dtype))  # float32, or float64 for a float64 model
    variance = xp_of(x).mean(x32 * x32, axis=-1, keepdims=True)  # [..., 1]
    return _rms_scale(x32, variance, weight, x32.dtype.type(eps))


@elementwise_kernel
def _rotate(x1, x2, cos, sin):
    return x1 * cos + (-x2) * sin, x2 * cos + x1 * sin  # the book's x cos + rotate_half(x) sin, half by half


def apply_rope(x, cos, sin):
    """`llama.apply_rope` as one kernel for both halves and one concatenation. x [b, heads, s, d]; cos, sin [b, s, d]
    as `llama.rope_cos_sin` makes them (both halves equal)."""
    half = x.shape[-1] // 2
    cos = cos[:, None, :, :half].astype(x.dtype, copy=False)  # [b, 1, s, d/2]: broadcast over the heads
    sin = sin[:, None, :, :half].astype(x.dtype, copy=False)
    return xp_of(x).concatenate(_rotate(x[..., :half], x[..., half:], cos, sin), axis=-1)


@elementwise_kernel
def _silu_mul(gate, up, one):
    return gate / (one + xp_of(gate).exp(-gate)) * up  # llama.silu(gate) * up, its 1 handed in typed


def silu_mul(gate, up):
    """SwiGLU's gated product $\\mathrm{SiLU}(g) \\odot u$ (`llama.silu`): [b, s, F], [b, s, F] -> [b, s, F]."""
    return _silu_mul(gate, up, gate.dtype.type(1))


KERNELS = {"rms_norm": rms_norm, "apply_rope": apply_rope, "act_mul": silu_mul}  # the `llama.LayerOps` they replace
