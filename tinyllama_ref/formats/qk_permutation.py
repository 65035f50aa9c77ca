r"""The q/k permutation: Meta's and llama.cpp's interleaved RoPE rows <-> Hugging Face's rotate-half rows.

RoPE rotates pairs of coordinates of each query/key head by position-dependent angles; pair i
turns at frequency theta_i = base^(-2i/d). The two conventions differ only in *which* coordinates
form pair i:
  Meta / llama.cpp / GGUF ("interleaved"): (x[2i], x[2i+1])   -- x as d/2 complex numbers
  Hugging Face ("rotate-half"):            (x[i], x[i + d/2]) -- first half with second half
HF's converter therefore reorders the rows of q_proj/k_proj (each row makes one coordinate) so
that HF's rotate-half RoPE sees the same pairs Meta's interleaved one does; llama.cpp's converter
undoes that. q and k get the same reordering P, an orthogonal matrix, and RoPE acts on them as
R_hf = P R_meta P^T, so q.k after RoPE -- hence attention and the logits -- is unchanged. The
reordering is per head, so keys use the key/value head count (GQA), not the query head count.
"""
from __future__ import annotations

import numpy as np


def _check_heads(w: np.ndarray, n_heads: int) -> None:
    if n_heads < 1 or w.shape[0] % (2 * n_heads):
        raise ValueError(f"cannot split {w.shape[0]} rows into {n_heads} heads of even size")


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rows (rotate-half) -> GGUF/Meta rows (interleaved), per head; as llama.cpp's converter.

    One head of dim 6: HF pairs rows (0, 3), (1, 4), (2, 5); GGUF puts each pair side by side.
    >>> permute_qk(np.arange(6), 1)
    array([0, 3, 1, 4, 2, 5])
    """
    _check_heads(w, n_heads)
    half = w.shape[0] // n_heads // 2
    # [heads, 2 halves, half, ...] -> [heads, half, 2, ...]: row (h, i) of half h goes to 2i + h
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """GGUF/Meta rows (interleaved) -> HF rows (rotate-half), per head: the inverse of `permute_qk`.

    >>> unpermute_qk(np.array([0, 3, 1, 4, 2, 5]), 1)
    array([0, 1, 2, 3, 4, 5])
    """
    _check_heads(w, n_heads)
    half = w.shape[0] // n_heads // 2
    # [heads, half, 2, ...] -> [heads, 2, half, ...]: even rows first, then odd rows
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
