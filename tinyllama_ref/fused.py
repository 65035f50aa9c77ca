r"""Fused kernels for the GPU: the decoder layer's pointwise steps, each compiled into one CUDA kernel.

On CuPy every array operation is a kernel launch, and a batch-1 decoding step is made of small ones:
the matrix-vector products read the weights, and around them dozens of elementwise operations per
layer each pay a launch (and a round trip through device memory) for a few thousand numbers.
`cupy.fuse` traces a Python function of elementwise operations once and compiles it into a single
kernel. The functions below are the pointwise parts of `llama.py`, written so that the traced code
*is* the book's code where it can be (`silu_mul` calls `llama.silu` itself):

- `rms_norm`: the mean of squares stays a reduction; the scaling after it, $w \odot x/\sqrt{v+\epsilon}$
  with its casts, is one kernel (instead of five);
- `apply_rope`: both halves of the rotation, $(x_1 \cos - x_2 \sin,\ x_2 \cos + x_1 \sin)$, in one kernel
  (instead of a negation, a concatenation, two products and a sum), then one concatenation;
- `silu_mul`: SwiGLU's $\mathrm{SiLU}(g) \odot u$ in one kernel (instead of five).

Softmax is left as the book writes it: its two reductions are not elementwise, and fusing its one
elementwise step would need a second copy of the attention function for one launch saved.

`KERNELS` hands them to the one decoder layer of `llama.py` as its `rms_norm`, `apply_rope` and
`act_mul` (`model.layer_ops`, on CuPy only, unless the model is built with `fused=False`; the CLI's
default for that is `TINYLLAMA_FUSED`). On NumPy an `elementwise_kernel` is its Python function; on the
CuPy double of the tests, whose `fuse` returns the function itself, the model gives logits
bit-identical to the book's (tests/test_fused.py). On a real GPU the kernels
round in their own order: equal to the plain functions within float tolerance, and **not yet run on a
GPU** (see docs/guides/gpu.md).
"""
from __future__ import annotations

import functools

import numpy as np

from .backend import xp_of
from .llama import compute_dtype, silu



def elementwise_kernel(fn):
    """`fn` compiled by its array module's `fuse` (made on first use, once per module); on NumPy, `fn` itself.

    Nothing here imports CuPy: the module comes from the arguments (`xp_of`), as everywhere else.
    """
    compiled = {}

    @functools.wraps(fn)
    def run(*args):
        xp = xp_of(*args)
        if xp is np:
            return fn(*args)
        if xp not in compiled:
            compiled[xp] = xp.fuse(fn)
        return compiled[xp](*args)

    return run


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
def silu_mul(gate, up):
    """SwiGLU's gated product $\\mathrm{SiLU}(g) \\odot u$: [b, s, F], [b, s, F] -> [b, s, F]."""
    return silu(gate) * up


KERNELS = {"rms_norm": rms_norm, "apply_rope": apply_rope, "act_mul": silu_mul}  # the `llama.LayerOps` they replace
