r"""Resizing the vocabulary: rows added to (or cut from) the embedding and the LM head.

Adding a token (a pad token, say) means one more row in the embedding matrix $E \in \mathbb{R}^{V \times D}$
and, unless the head is tied to it, one more row in the LM head $W \in \mathbb{R}^{V \times D}$. The old
rows stay as they are, bit for bit; shrinking cuts rows from the end. How a new row is drawn follows
transformers' `PreTrainedModel.resize_token_embeddings` (5.x):

- `mean_resizing=True` (the default): from a normal distribution with the old rows' mean $\mu$ and
  covariance $\Sigma$ scaled by $\epsilon = 10^{-9}$,
  $$\mu = \tfrac1V \textstyle\sum_i E_i, \quad \Sigma = \tfrac1V (E-\mu)^\top (E-\mu), \quad
    e_\text{new} \sim \mathcal N(\mu,\ \epsilon\,\Sigma),$$
  so a new token starts as the "average token": the next-token distribution barely moves
  (Hewitt, *Initializing new word embeddings*, 2021). When $\epsilon\Sigma$ is not positive definite
  (fewer rows than dimensions, say) the new rows are $\mu$ itself.
- `mean_resizing=False`: from $\mathcal N(0, \sigma^2)$ with $\sigma$ = `initializer_range`, as
  `_init_weights` initialises a fresh embedding.

Each matrix (embedding, untied head) gets its own $\mu$ and $\Sigma$. transformers draws with
torch's generator; ours draws with NumPy's, from a `seed` (our addition), so the new rows have the
same distribution but not the same values.
"""
from __future__ import annotations

import numpy as np

from .backend import to_numpy, xp_of

MEAN_RESIZING_EPSILON = 1e-9  # transformers' `epsilon` in _init_added_embeddings_weights_with_mean


def resized_num_tokens(old_num_tokens: int, new_num_tokens: int | None, pad_to_multiple_of: int | None) -> int:
    """The new row count: `new_num_tokens` (default: the old count) rounded up to `pad_to_multiple_of`.

    >>> resized_num_tokens(32000, 32001, 64)
    32064
    """
    if new_num_tokens is None:
        new_num_tokens = old_num_tokens
    if pad_to_multiple_of is None:
        return new_num_tokens
    return (new_num_tokens + pad_to_multiple_of - 1) // pad_to_multiple_of * pad_to_multiple_of


def mean_rows(weight: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` rows drawn from N(mu, eps * Sigma) of the rows of `weight` [V, D] (float32, as transformers).

    mu + z L^T with z ~ N(0, I) and L L^T = eps * Sigma (Cholesky); mu repeated when eps * Sigma is
    not positive definite (the Cholesky factorisation fails: torch's `positive_definite` check).
    """
    w = np.asarray(weight, dtype=np.float32)
    mu = w.mean(axis=0)  # [D]
    centered = w - mu  # [V, D]
    covariance = centered.T @ centered / w.shape[0]  # [D, D]
    try:
        scale_tril = np.linalg.cholesky(MEAN_RESIZING_EPSILON * covariance)  # [D, D]
    except np.linalg.LinAlgError:
        return np.repeat(mu[None], n, axis=0)
    z = rng.standard_normal((n, w.shape[1]), dtype=np.float32)  # [n, D]
    return mu + z @ scale_tril.T


def resize_rows(weight, new_num_tokens: int, mean_resizing: bool, initializer_range: float,
                rng: np.random.Generator, round_rows=None):
    """`weight` [V, D] -> [new_num_tokens, D]: the first min(V, new) rows kept, new rows drawn.

    New rows are drawn on the host, passed through `round_rows` if given (the model's edge rounds
    them to the checkpoint's float16 or bfloat16 when it holds the weights wider, as transformers
    casts them to the weight's dtype), and land where `weight` lives (NumPy or CuPy).
    """
    xp = xp_of(weight)
    old = weight.shape[0]
    if new_num_tokens == old:
        return weight
    if new_num_tokens < old:
        return weight[:new_num_tokens]
    added = new_num_tokens - old
    if mean_resizing:
        rows = mean_rows(to_numpy(weight), added, rng)  # one copy of the matrix to the host
    else:
        rows = rng.normal(0.0, initializer_range, size=(added, weight.shape[1]))
    if round_rows is not None:
        rows = round_rows(rows)
    return xp.concatenate([weight, xp.asarray(rows.astype(weight.dtype))])  # [new_num_tokens, D]
