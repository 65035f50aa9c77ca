r"""Rotary position embedding (RoPE) and its six documented variants.

RoPE encodes position $m$ by rotating each pair of query/key features by the angle $m\,\theta_i$,
where $\theta_i = b^{-2i/d}$ ($b$ = `rope_theta`, $d$ = head_dim, $i = 0 \dots d/2-1$):

$$\begin{pmatrix} q'_{i} \\ q'_{i+d/2} \end{pmatrix} =
  \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
  \begin{pmatrix} q_{i} \\ q_{i+d/2} \end{pmatrix}$$

Because rotations compose, $\langle R_m q, R_n k\rangle = \langle q, R_{n-m} k\rangle$: the attention
score depends only on the offset $n - m$. Hugging Face pairs feature $i$ with $i + d/2$
("rotate half"); Meta and llama.cpp pair $2i$ with $2i+1$ (see `gguf.py` for the permutation
between the two layouts).

The scaling variants only change the inverse frequencies $\theta_i$ (and, for yarn and longrope,
multiply cos and sin by an attention factor). As in transformers' `modeling_rope_utils.py`, one
registry maps each `rope_type` to a function returning `(inv_freq, attention_factor)`. All of it is
computed in float32, whatever the weights' dtype.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import xp_of
from .config import LlamaConfig

F32 = np.float32


def _exponents(dim: int) -> np.ndarray:
    """$2i/d$ for $i = 0 \\dots d/2-1$, in float32: `_exponents(4) -> [0.0, 0.5]`."""
    return np.arange(0, dim, 2, dtype=np.int64).astype(F32) / F32(dim)


def _base_inv_freq(base: float, dim: int) -> np.ndarray:
    r"""$\theta_i = b^{-2i/d}$ (the original RoPE frequencies)."""
    return (F32(1.0) / np.power(F32(base), _exponents(dim))).astype(F32)


def default_inv_freq(p: dict, dim: int, max_pos: int, seq_len: int | None):
    """Original RoPE (Su et al. 2021): no scaling."""
    return _base_inv_freq(p["rope_theta"], dim), 1.0


def linear_inv_freq(p: dict, dim: int, max_pos: int, seq_len: int | None):
    r"""Position interpolation (kaiokendev; Chen et al. 2023): $\theta_i / s$, i.e. position $m$ acts as $m/s$."""
    return (_base_inv_freq(p["rope_theta"], dim) / F32(p["factor"])).astype(F32), 1.0


def dynamic_inv_freq(p: dict, dim: int, max_pos: int, seq_len: int | None):
    r"""Dynamic NTK scaling: past the trained length $L$, grow the base with the sequence length $n$:
    $b' = b\,(s\,n/L - (s-1))^{d/(d-2)}$. Within $L$ it is the original RoPE."""
    n = max(seq_len or max_pos, max_pos)
    s = p["factor"]
    base = p["rope_theta"] * ((s * n / max_pos) - (s - 1)) ** (dim / (dim - 2))
    return _base_inv_freq(base, dim), 1.0


def yarn_inv_freq(p: dict, dim: int, max_pos: int, seq_len: int | None):
    r"""YaRN (Peng et al. 2023): interpolate low frequencies by $s$, keep high ones, blend linearly between
    the dimensions that turn `beta_slow` and `beta_fast` times over the original context; scale attention
    by $0.1 \ln s + 1$."""
    base, s = p["rope_theta"], p["factor"]
    orig = p["original_max_position_embeddings"]
    if s is None:
        s = max_pos / orig

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = mscale(s, p["mscale"]) / mscale(s, p["mscale_all_dim"])
        else:
            attention_factor = mscale(s)
    beta_fast = p.get("beta_fast") or 32
    beta_slow = p.get("beta_slow") or 1

    def correction_dim(rotations):  # the dimension index that turns `rotations` times over `orig` positions
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=F32) - F32(low)) / F32(high - low), 0, 1).astype(F32)
    extrapolation = F32(1) - ramp  # 1: keep the original frequency, 0: interpolate
    pos_freqs = np.power(F32(base), _exponents(dim))
    inv_freq = (F32(1) / (F32(s) * pos_freqs)) * (F32(1) - extrapolation) + (F32(1) / pos_freqs) * extrapolation
    return inv_freq.astype(F32), float(attention_factor)


def longrope_inv_freq(p: dict, dim: int, max_pos: int, seq_len: int | None):
    r"""LongRoPE (Ding et al. 2024): per-frequency rescale factors, `long_factor` beyond the original
    context and `short_factor` within it; attention scaled by $\sqrt{1 + \ln s / \ln L}$."""
    orig = p["original_max_position_embeddings"]
    s = p.get("factor")
    if s is None:
        s = max_pos / orig
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if s <= 1.0 else math.sqrt(1 + math.log(s) / math.log(orig))
    ext = np.asarray(p["long_factor"] if seq_len and seq_len > orig else p["short_factor"], dtype=F32)
    inv_freq = F32(1) / (ext * np.power(F32(p["rope_theta"]), _exponents(dim)))
    return inv_freq.astype(F32), float(attention_factor)


def llama3_inv_freq(p: dict, dim: int, max_pos: int, seq_len: int | None):
    r"""Llama 3.1: wavelengths longer than $L/\text{low}$ are divided by $s$, shorter than $L/\text{high}$
    are kept, and those between are blended smoothly."""
    inv_freq = _base_inv_freq(p["rope_theta"], dim)
    s, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    orig = p["original_max_position_embeddings"]
    wavelen = F32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > orig / lo, inv_freq / F32(s), inv_freq).astype(F32)
    smooth = ((orig / wavelen - lo) / (hi - lo)).astype(F32)
    smoothed = (F32(1) - smooth) * scaled / F32(s) + smooth * scaled
    is_medium = ~(wavelen < orig / hi) & ~(wavelen > orig / lo)
    return np.where(is_medium, smoothed, scaled).astype(F32), 1.0


ROPE_INIT_FUNCTIONS = {
    "default": default_inv_freq,
    "linear": linear_inv_freq,
    "dynamic": dynamic_inv_freq,
    "yarn": yarn_inv_freq,
    "longrope": longrope_inv_freq,
    "llama3": llama3_inv_freq,
}


def rope_inv_freq(config: LlamaConfig, seq_len: int | None = None) -> tuple[np.ndarray, float]:
    """Inverse frequencies [head_dim/2] (float32, NumPy) and the attention factor for this config.

    `seq_len` (the largest position + 1 in the batch) matters only to "dynamic" and "longrope",
    which choose their frequencies from it. Unlike transformers' stateful module, this is a pure
    function of `seq_len`; the two agree whenever sequences only grow, as in generation.
    """
    p = config.rope_parameters
    fn = ROPE_INIT_FUNCTIONS[p["rope_type"]]
    return fn(p, config.head_dim, config.max_position_embeddings, seq_len)


def rope_cos_sin(inv_freq, position_ids, attention_factor: float = 1.0):
    r"""cos and sin of $m\,\theta_i$ for each position: [batch, seq] -> two [batch, seq, head_dim] arrays.

    The frequencies are repeated ([θ0..θ(d/2-1), θ0..θ(d/2-1)]) to match the rotate-half pairing.
    """
    xp = xp_of(position_ids)
    inv_freq = xp.asarray(inv_freq, dtype=F32)
    freqs = position_ids[..., None].astype(F32) * inv_freq  # [b, s, d/2]
    emb = xp.concatenate([freqs, freqs], axis=-1)  # [b, s, d]
    return xp.cos(emb) * F32(attention_factor), xp.sin(emb) * F32(attention_factor)


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] on the last axis: the 90° turn of every (x[i], x[i + d/2]) pair."""
    xp = xp_of(x)
    half = x.shape[-1] // 2
    return xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x, cos, sin):
    r"""Rotate queries or keys [batch, heads, seq, head_dim] by their positions: $x\cos + \mathrm{rot}(x)\sin$.

    cos and sin are [batch, seq, head_dim]; they broadcast over the heads axis.
    """
    cos, sin = cos[:, None].astype(x.dtype), sin[:, None].astype(x.dtype)
    return x * cos + rotate_half(x) * sin
