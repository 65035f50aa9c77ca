r"""RoPE scalings: five ways to stretch a model's context by changing RoPE's frequencies.

The core (`llama.py`) rotates pair $i$ of a query or key at position $m$ by $m\,\theta_i$ with
$\theta_i = b^{-2i/d}$. A model trained on $L$ positions has never seen the slow pairs turn further
than $L\,\theta_i$; each scaling below changes the $\theta_i$ (and, for yarn and longrope, multiplies
cos and sin by an attention factor) so that longer inputs stay in familiar territory. As in
transformers' `modeling_rope_utils.py`, one registry maps each `rope_type` of the config to a function
returning `(inv_freq, attention_factor)`, which is all the core consumes. All of it is computed in
float32 NumPy, whatever the weights' dtype, with torch's roundings (bit for bit for head_dim <= 16).
"""
from __future__ import annotations

import math

import numpy as np

from .config import LlamaConfig
from .llama import rope_frequencies

F32 = np.float32


def _exponents(dim: int) -> np.ndarray:
    """$2i/d$ for $i = 0 \\dots d/2-1$, in float32: `_exponents(4) -> [0.0, 0.5]`."""
    return np.arange(0, dim, 2, dtype=np.int64).astype(F32) / F32(dim)


def _power(base, exponents) -> np.ndarray:
    """$b^e$ in float32 as torch computes it: the power in float64, rounded once (NumPy's float32 power may
    differ in the last bit)."""
    return (np.float64(F32(base)) ** np.asarray(exponents, dtype=F32).astype(np.float64)).astype(F32)


def default_inv_freq(p: dict, dim: int, max_pos: int, seq_len: int | None):
    """Original RoPE (Su et al. 2021): no scaling."""
    return rope_frequencies(p["rope_theta"], dim), 1.0


def linear_inv_freq(p: dict, dim: int, max_pos: int, seq_len: int | None):
    r"""Position interpolation (kaiokendev; Chen et al. 2023): $\theta_i / s$, i.e. position $m$ acts as $m/s$."""
    return (rope_frequencies(p["rope_theta"], dim) / F32(p["factor"])).astype(F32), 1.0


def dynamic_inv_freq(p: dict, dim: int, max_pos: int, seq_len: int | None):
    r"""Dynamic NTK scaling: past the trained length $L$, grow the base with the sequence length $n$:
    $b' = b\,(s\,n/L - (s-1))^{d/(d-2)}$. Within $L$ it is the original RoPE."""
    n = max(seq_len or max_pos, max_pos)
    s = p["factor"]
    if n <= max_pos:
        return rope_frequencies(p["rope_theta"], dim), 1.0
    grown = F32(s) * F32(n) / F32(max_pos) - F32(s - 1)  # float32, as transformers computes it (from a tensor)
    base = F32(p["rope_theta"]) * F32(np.float64(grown) ** (dim / (dim - 2)))
    return rope_frequencies(base, dim), 1.0


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
    pos_freqs = _power(base, _exponents(dim))
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
    inv_freq = F32(1) / (ext * _power(p["rope_theta"], _exponents(dim)))
    return inv_freq.astype(F32), float(attention_factor)


def llama3_inv_freq(p: dict, dim: int, max_pos: int, seq_len: int | None):
    r"""Llama 3.1: wavelengths longer than $L/\text{low}$ are divided by $s$, shorter than $L/\text{high}$
    are kept, and those between are blended smoothly."""
    inv_freq = rope_frequencies(p["rope_theta"], dim)
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


class RopeTables:
    """One model's inverse frequencies, on its device, computed once per length bucket instead of every forward.

    Only "dynamic" and "longrope" depend on the length (the furthest position + 1): longrope has two
    buckets (within its original context, and beyond), dynamic NTK one up to `max_position_embeddings`
    and one per length past it. Every other type has a single table. Calling it with `seq_len` returns what
    `rope_inv_freq` returns, with the frequencies as an array of the model's module (copied up once).
    """

    MAX_BUCKETS = 16  # dynamic NTK past the trained length makes one per length: keep the memory bounded

    def __init__(self, config: LlamaConfig, xp=np):
        self.config, self.xp, self.buckets = config, xp, {}
        self.rope_type = config.rope_parameters["rope_type"]
        self.length_dependent = self.rope_type in ("dynamic", "longrope")

    def bucket(self, seq_len: int | None):
        """The key under which `seq_len` shares its frequencies with every other length of its bucket."""
        if self.rope_type == "dynamic":
            return max(seq_len or 0, self.config.max_position_embeddings)  # as dynamic_inv_freq's n
        if self.rope_type == "longrope":
            return bool(seq_len and seq_len > self.config.rope_parameters["original_max_position_embeddings"])
        return None

    def for_positions(self, position_ids, furthest: int | None):
        """The frequencies for these positions, the largest being `furthest` (None: not known on the host)."""
        if self.length_dependent and furthest is None:
            furthest = int(position_ids.max())  # positions given on the device: one sync to read the largest
        return self(None if furthest is None else furthest + 1)

    def __call__(self, seq_len: int | None = None):
        key = self.bucket(seq_len)
        if key not in self.buckets:
            if len(self.buckets) >= self.MAX_BUCKETS:
                self.buckets.clear()
            inv_freq, attention_factor = rope_inv_freq(self.config, seq_len)
            self.buckets[key] = (self.xp.asarray(inv_freq), attention_factor)  # the one host->device copy
        return self.buckets[key]
