r"""Weight-only quantization: the linear layers' weights kept as 8- or 4-bit integers, as torchao does.

Hugging Face's int4 example (the Llama-2 model page) loads a model with
`TorchAoConfig(Int4WeightOnlyConfig(group_size=128))`; `Int8WeightOnlyConfig()` is its 8-bit sibling.
Both keep each `nn.Linear` weight $W$ [out, in] as small integers $q$ plus a few floats per row or
group, and turn them back into floats just before the matrix product. The activations stay float:
only memory changes, and the rounding error each weight carries.

**int8** (torchao `Int8WeightOnlyConfig`, `Int8Tensor.from_hp`: `choose_qparams_affine` SYMMETRIC,
`quantize_affine`, `dequantize_affine`): one scale per output row, range [-128, 127]:

$$s_r = \max\!\big(\max_j |W_{rj}| / 127.5,\ \epsilon\big), \qquad
  q_{rj} = \mathrm{clamp}\big(\mathrm{round}(W_{rj} \cdot (1/s_r)),\ -128,\ 127\big), \qquad
  \hat W_{rj} = q_{rj}\, s_r$$

with $\epsilon$ = float32's machine epsilon, scales in float32, and the zero point 0.
(127.5 = (127 - (-128)) / 2; the largest weight of a row may round to 128 and is clamped to 127.)

**int4** (torchao `Int4WeightOnlyConfig`, tinygemm's scheme: `_choose_qparams_affine_tinygemm`,
`_quantize_affine_tinygemm`, `_dequantize_affine_tinygemm`, zero point in the float domain): each row is
cut into groups of `group_size` consecutive inputs (by default chosen per weight: the largest of 128, 64
and 32 that divides its input size, `default_group_size`); a group $G$ gets an asymmetric range [0, 15]
centred on the mid point 8:

$$s_G = \max\!\Big(\frac{\max_G W - \min_G W}{15},\ \epsilon\Big), \quad z_G = \min_G W + 8\, s_G, \quad
  q = \mathrm{clamp}\Big(\mathrm{round}\big(\frac{W - (z_G - 8 s_G)}{s_G}\big),\ 0,\ 15\Big), \quad
  \hat W = (q - 8)\, s_G + z_G$$

with $\epsilon$ = the smallest normal number of the weight's dtype and $s, z$ in the weight's dtype.
The zero point $z$ is the float the code 8 stands for, so 0.0 need not be exactly representable.
Two codes share a byte, the even column in the high nibble: `byte = q[:, 2i] << 4 | q[:, 2i+1]`
(tinygemm's order before its kernel-specific tiling, which we do not need).

Rounding is to nearest, ties to even (torch.round, NumPy's round). Every element's error is at most
half its scale, $|W - \hat W| \le s/2$, up to float rounding. `round` is exact in both modules, so the
codes, scales and zero points equal torchao's bit for bit (tests/test_quantize.py).

What is quantized follows transformers' `TorchAoConfig` defaults: every `nn.Linear` of the decoder
layers (q/k/v/o, gate/up/down). The embedding is not (`include_input_output_embeddings=False`), and
neither is the head: transformers leaves the output embedding, tied or not, out of the conversion
(`get_keys_to_not_convert`). One difference: where `group_size` does not divide a weight's input
size, torchao leaves that weight in float with a log message; we refuse with an error naming it. Hence
the default: torchao's 128 divides neither the bundled model's width (192) nor SmolLM2-135M's (576), so
unless a group size is given each weight takes the largest of 128, 64, 32 that divides its input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import xp_of

SCHEMES = ("int8", "int4")
AUTO_GROUP_SIZES = (128, 64, 32)  # int4 without a group_size: the first that divides a weight's input
LINEARS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


class QuantizationError(ValueError):
    """A weight that cannot be quantized as asked (its input size and the group size)."""


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight [out, in] kept as integers: `dequantize` gives it back as floats.

    packed: int8 [out, in] (int8), or uint8 [out, in/2] holding two 4-bit codes per byte (int4).
    scales [out, in/group_size]; zeros: the same shape (int4), None (int8: symmetric, the zero point is 0).
    group_size: inputs sharing one scale (int8: the whole row, `in`); dtype: the dtype `dequantize` returns.
    """

    packed: Any
    scales: Any
    zeros: Any
    group_size: int
    shape: tuple
    bits: int
    dtype: str

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (self.packed, self.scales, self.zeros) if a is not None)


def quantize_int8(w, name: str = "weight") -> QuantizedWeight:
    """Symmetric per-row int8 (torchao `Int8WeightOnlyConfig`): [out, in] -> codes in [-128, 127], one scale per row.

    [[0.5, -1.0], [2.0, 0.0]] -> scales [[1/127.5], [2/127.5]], codes [[64, -127], [127, 0]]:
    0.5 * 127.5 = 63.75 rounds to 64; -1.0 * (1/s) is -127.49999 in float32 (1/s is not exactly 127.5)
    and rounds to -127; 2.0 * (1/s) is near 127.5, clamped to 127 whichever way it rounds.
    """
    xp = xp_of(w)
    check_matrix(w, name)
    f32, dt = np.float32, w.dtype.type
    amax = xp.maximum(-xp.minimum(w.min(axis=1, keepdims=True), 0), xp.maximum(w.max(axis=1, keepdims=True), 0))
    scales = xp.maximum(amax / dt(127.5), dt(np.finfo(f32).eps)).astype(f32)  # [out, 1], as torchao: float32
    codes = xp.clip(xp.round(w * (f32(1.0) / scales)), -128, 127).astype(np.int8)
    return QuantizedWeight(codes, scales, None, int(w.shape[1]), tuple(w.shape), 8, str(w.dtype))


def quantize_int4(w, group_size: int | None = None, name: str = "weight") -> QuantizedWeight:
    """Asymmetric int4 per group of `group_size` inputs (torchao `Int4WeightOnlyConfig`, tinygemm's scheme);
    None: `default_group_size` of the weight's input size.

    A group [0.0, 1.5, 3.0, -1.5] -> scale 4.5/15 = 0.3, zero point -1.5 + 8 * 0.3 = 0.9,
    codes round((w + 1.5) / 0.3) = [5, 10, 15, 0], packed as bytes [0x5A, 0xF0].
    """
    xp = xp_of(w)
    check_matrix(w, name)
    out, n_in = w.shape
    group_size = default_group_size(n_in, name) if group_size is None else group_size
    check_group_size(n_in, group_size, name)
    dt = w.dtype.type
    groups = w.reshape(out, n_in // group_size, group_size)  # [out, G, g]
    lo, hi = groups.min(axis=-1), groups.max(axis=-1)  # [out, G]
    scales = xp.maximum((hi - lo) / dt(15), dt(np.finfo(w.dtype).smallest_normal))
    zeros = lo + scales * dt(8)
    lowest = (zeros - scales * dt(8))[..., None]  # the float that code 0 stands for
    codes = xp.clip(xp.round((groups - lowest) / scales[..., None]), 0, 15).astype(np.uint8)
    return QuantizedWeight(pack_int4(codes.reshape(out, n_in)), scales, zeros, group_size, (out, n_in), 4,
                           str(w.dtype))


def pack_int4(codes):
    """[rows, 2n] codes in [0, 15] -> [rows, n] bytes, the even column in the high nibble: [[5, 10]] -> [[0x5A]]."""
    return (codes[:, 0::2] << 4) | codes[:, 1::2]


def unpack_int4(packed):
    """The inverse of `pack_int4`: [rows, n] bytes -> [rows, 2n] codes."""
    xp = xp_of(packed)
    rows, n = packed.shape
    return xp.stack([packed >> 4, packed & 15], axis=-1).reshape(rows, 2 * n)  # high nibble first


def dequantize(qw: QuantizedWeight):
    r"""The float weight [out, in] a QuantizedWeight stands for: $q\,s$ (int8) or $(q - 8)\,s + z$ (int4).

    The operations in torchao's order (`dequantize_affine`, `_dequantize_affine_tinygemm`), so the result
    is the float weight torchao's `dequantize()` returns.
    """
    out, n_in = qw.shape
    if qw.bits == 8:
        return (qw.packed.astype(qw.dtype) * qw.scales).astype(qw.dtype, copy=False)  # zero point 0: no subtraction
    codes = unpack_int4(qw.packed).reshape(out, n_in // qw.group_size, qw.group_size)  # [out, G, g]
    centred = (codes.astype(np.float32) - np.float32(8)).astype(qw.dtype, copy=False)  # q - 8
    return (centred * qw.scales[..., None] + qw.zeros[..., None]).reshape(out, n_in)


def quantize_weight(w, scheme: str, group_size: int | None = None, name: str = "weight") -> QuantizedWeight:
    """`quantize_int8(w)` or `quantize_int4(w, group_size)` by name ("int8", "int4")."""
    if scheme == "int8":
        return quantize_int8(w, name)
    return quantize_int4(w, group_size, name)


def quantize_params(params: dict, scheme: str, group_size: int | None = None) -> dict:
    """The parameter tree with every decoder-layer linear weight quantized, one weight at a time.

    The embedding, the norms, the biases and the head stay float (transformers' `TorchAoConfig`
    defaults). int4 with group_size None: each weight its `default_group_size`. Each float weight is
    replaced as soon as it is quantized, so the quantized model never holds two copies of the whole
    model. Returns the same (mutated) tree.
    """
    for i, layer in enumerate(params["model"]["layers"]):
        for block, names in LINEARS.items():
            for proj in names:
                p = layer[block][proj]
                p["weight"] = quantize_weight(p["weight"], scheme, group_size,
                                              f"model.layers.{i}.{block}.{proj}.weight")
    return params


def is_quantized(params: dict) -> bool:
    """True when the decoder layers hold QuantizedWeights (`quantize_params` made them)."""
    layers = params["model"]["layers"]
    return bool(layers) and isinstance(layers[0]["self_attn"]["q_proj"]["weight"], QuantizedWeight)


def dequantizing(linear_fn):
    """A `linear_fn(x, p)` (a `column_linear` or `row_linear` of `llama.LayerOps`) that dequantizes p's weight
    just before the product: only one projection's float weight exists at a time."""

    def run(x, p: dict):
        w = p["weight"]
        return linear_fn(x, {**p, "weight": dequantize(w)} if isinstance(w, QuantizedWeight) else p)

    return run


def check_matrix(w, name: str) -> None:
    """Quantization takes a float matrix [out, in]."""
    if w.ndim != 2 or w.dtype.kind != "f":
        raise QuantizationError(f"{name}: quantization takes a float matrix [out, in], got shape "
                                f"{tuple(w.shape)} {w.dtype}")


def check_arguments(quantize, group_size) -> None:
    """`load`'s and `build_model`'s `quantize` (None, "int8" or "int4") and, for int4, `group_size`."""
    if quantize not in (None, *SCHEMES):
        raise ValueError(f"quantize must be None, 'int8' or 'int4', got {quantize!r}")
    if quantize == "int4" and group_size is not None:  # None: chosen per weight
        check_group_size_value(group_size)


def check_group_size_value(group_size) -> None:
    """The argument itself: a positive integer."""
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise QuantizationError(f"group_size must be a positive integer, got {group_size!r}")


def default_group_size(n_in: int, name: str = "weight") -> int:
    """int4's group size when none is given: the largest of 128, 64 and 32 that divides the input size
    (192 -> 64, 512 -> 128, 576 -> 64, 1536 -> 128); an error naming the weight when none does."""
    for g in AUTO_GROUP_SIZES:
        if n_in % g == 0:
            return g
    raise QuantizationError(f"{name}: none of the default int4 group sizes {', '.join(map(str, AUTO_GROUP_SIZES))} "
                            f"divides its input size {n_in}; give a group_size that does, e.g. {_divisor_hint(n_in)}")


def group_sizes(params: dict) -> dict:
    """{group size: [(projection, input size), ...]} of an int4 model's layer-0 weights, for `info`."""
    out: dict = {}
    for block, names in LINEARS.items():
        for proj in names:
            qw = params["model"]["layers"][0][block][proj]["weight"]
            out.setdefault(qw.group_size, []).append((proj, qw.shape[1]))
    return out


def check_group_size(n_in: int, group_size: int, name: str) -> None:
    """int4 groups must tile each row exactly, and the row must split into byte pairs."""
    check_group_size_value(group_size)
    if n_in % group_size:
        raise QuantizationError(f"{name}: group_size {group_size} does not divide its input size {n_in} "
                                f"(shape [out, in]); choose a group_size that does, e.g. "
                                f"{_divisor_hint(n_in)} (torchao would leave this weight unquantized)")
    if n_in % 2:
        raise QuantizationError(f"{name}: int4 packs two values per byte, so the input size must be even; "
                                f"got {n_in}")


def _divisor_hint(n_in: int) -> str:
    options = [g for g in (256, 128, 64, 32) if n_in % g == 0]  # torchao's documented choices
    if not options:  # the largest even divisors up to 128: small groups still pack into bytes
        options = [g for g in range(min(n_in, 128), 1, -1) if n_in % g == 0 and g % 2 == 0][:2]
    return " or ".join(map(str, options)) if options else f"an even divisor of {n_in}"
