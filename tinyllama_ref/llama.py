r"""LLaMA in one file, in the order of the paper (Touvron et al. 2023; Llama 2: grouped-query attention).

    tokens -> embedding
           -> N x [ x += Attention(RMSNorm(x));  x += SwiGLU(RMSNorm(x)) ]
           -> RMSNorm -> logits

Every function is pure and takes plain arrays, NumPy or CuPy (`xp_of` finds the module from its
inputs), and parameter dicts keyed by the checkpoint's own names (`q_proj`, `gate_proj`, ...).
Weights keep PyTorch's `nn.Linear` layout [out, in], so a linear layer is $x W^\top$.
Shapes: b = batch, s = new tokens, t = tokens attended to (cache + new), h = query heads,
g = key/value heads, d = head_dim, D = hidden_size, F = intermediate_size, V = vocab_size.
The variants (RoPE scalings, Open-Llama, `pretraining_tp`, other heads) live in modules of their own
and are chosen from the config before this code runs; see `model.forward`.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import xp_of

F32 = np.float32


def embed(weight, input_ids):
    """Token embedding: row `i` of the [V, D] table is token i's vector. [b, s] -> [b, s, D]"""
    return weight[input_ids]


def rms_norm(x, weight, eps: float):
    r"""RMSNorm (Zhang & Sennrich 2019): $y = w \odot x / \sqrt{\mathrm{mean}(x^2) + \epsilon}$.

    No mean subtraction and no bias. Computed in float32 whatever the input dtype, as the reference does.
    """
    xp = xp_of(x)
    x32 = x.astype(F32)
    variance = xp.mean(x32 * x32, axis=-1, keepdims=True)
    return weight * (x32 / xp.sqrt(variance + F32(eps))).astype(x.dtype)


def rope_frequencies(theta: float, head_dim: int) -> np.ndarray:
    r"""RoPE's frequencies (Su et al. 2021): $\theta_i = b^{-2i/d}$ for $i = 0 \dots d/2-1$ (float32, NumPy).

    Feature pair $i$ of a query or key at position $m$ turns by the angle $m\,\theta_i$: fast for
    the first pairs, slow for the last. The scaled variants in `rope_scaling.py` replace these.
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(F32) / F32(head_dim)  # 2i/d
    return (F32(1.0) / np.power(F32(theta), exponents)).astype(F32)


def rope_cos_sin(inv_freq, position_ids, attention_factor: float = 1.0):
    r"""cos and sin of $m\,\theta_i$ for each position: [b, s] -> two [b, s, d] arrays.

    The frequencies are repeated ([θ0..θ(d/2-1), θ0..θ(d/2-1)]) to match the rotate-half pairing.
    """
    xp = xp_of(position_ids)
    freqs = position_ids[..., None].astype(F32) * xp.asarray(inv_freq, dtype=F32)  # [b, s, d/2]
    emb = xp.concatenate([freqs, freqs], axis=-1)  # [b, s, d]
    return xp.cos(emb) * F32(attention_factor), xp.sin(emb) * F32(attention_factor)


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] on the last axis: the 90° turn of every (x[i], x[i + d/2]) pair."""
    xp = xp_of(x)
    half = x.shape[-1] // 2
    return xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x, cos, sin):
    r"""Rotate every pair $(x_i, x_{i+d/2})$ by its angle: $x \cos + \mathrm{rot}(x) \sin$.

    $$\begin{pmatrix} x'_{i} \\ x'_{i+d/2} \end{pmatrix} =
      \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
      \begin{pmatrix} x_{i} \\ x_{i+d/2} \end{pmatrix}$$

    Rotations compose, so $\langle R_m q, R_n k\rangle = \langle q, R_{n-m} k\rangle$: the score of a
    query and a key depends only on their offset. (Meta and llama.cpp pair $x_{2i}$ with $x_{2i+1}$
    instead; `formats/gguf.py` permutes the weights between the two layouts.)
    x [b, heads, s, d]; cos, sin [b, s, d] broadcast over the heads.
    """
    cos, sin = cos[:, None].astype(x.dtype), sin[:, None].astype(x.dtype)
    return x * cos + rotate_half(x) * sin


def linear(x, p: dict):
    r"""$y = x W^\top + b$ with W [out, in] (the bias is optional): [..., in] -> [..., out]."""
    y = x @ p["weight"].T
    if p.get("bias") is not None:
        y = y + p["bias"]
    return y


def split_heads(x, n_heads: int, head_dim: int):
    """[b, s, n*d] -> [b, n, s, d]"""
    b, s, _ = x.shape
    return x.reshape(b, s, n_heads, head_dim).transpose(0, 2, 1, 3)


def merge_heads(x):
    """[b, n, s, d] -> [b, s, n*d]"""
    b, n, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, n * d)


def attention_mask_bias(attention_mask, q_len: int, kv_len: int, past_len: int):
    r"""The additive mask [b, 1, s, t]: 0 where query i may look at key j, the float32 minimum elsewhere.

    Key j is visible to the query at cache slot `past_len + i` when it is not in the future
    (j <= past_len + i) and not padding (attention_mask[b, j] == 1). A query row with nothing
    visible (a pad token at the left of a batch) ends up uniform after softmax, exactly as in
    transformers' eager attention; its output is never used.
    """
    xp = xp_of(attention_mask)
    q_slots = past_len + xp.arange(q_len)[:, None]  # [s, 1]
    causal = xp.arange(kv_len)[None, :] <= q_slots  # [s, t]
    visible = causal[None, None] & (attention_mask[:, None, None, :kv_len] != 0)  # [b, 1, s, t]
    return xp.where(visible, F32(0), F32(np.finfo(F32).min))


def softmax(scores, axis: int = -1):
    """Numerically stable softmax in float32 (subtract the row maximum before exp)."""
    xp = xp_of(scores)
    s = scores.astype(F32)
    e = xp.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def repeat_kv(x, n_rep: int):
    """Grouped-query attention: let `n_rep` query heads share each key/value head.

    [b, g, t, d] -> [b, g*n_rep, t, d], head j of the result being head j // n_rep of the input
    (the same order as torch.repeat_interleave on the heads axis).
    """
    if n_rep == 1:
        return x
    b, g, t, d = x.shape
    return xp_of(x).broadcast_to(x[:, :, None], (b, g, n_rep, t, d)).reshape(b, g * n_rep, t, d)


def scaled_dot_product_attention(q, k, v, mask_bias, scale: float):
    r"""$\mathrm{softmax}(q k^\top / \sqrt{d} + M)\,v$ with grouped key/value heads; probabilities in float32.

    q [b, h, s, d]; k and v [b, g, t, d] with g dividing h; mask_bias [b, 1, s, t]
    -> output [b, h, s, d], probs [b, h, s, t].
    The h/g query heads of a group are stacked along the query axis and meet their shared key/value
    head in one matmul: the same result as `repeat_kv` followed by plain attention, without copying
    the keys and values h/g times.
    """
    b, h, s, d = q.shape
    g, t = k.shape[1], k.shape[2]
    qg = q.reshape(b, g, (h // g) * s, d)  # [b, g, rep*s, d]
    scores = (qg @ k.swapaxes(-1, -2)) * q.dtype.type(scale)  # [b, g, rep*s, t]
    scores = scores.reshape(b, g, h // g, s, t).astype(F32) + mask_bias[:, :, None]  # mask: every head
    probs = softmax(scores).astype(q.dtype)  # [b, g, rep, s, t]
    out = probs.reshape(b, g, (h // g) * s, t) @ v  # [b, g, rep*s, d]
    return out.reshape(b, h, s, d), probs.reshape(b, h, s, t)


def self_attention(p: dict, x, cos, sin, mask_bias, config, cache=None, layer: int = 0, past_len: int = 0):
    """Grouped-query self-attention with RoPE and a KV cache: [b, s, D] -> [b, s, D] (and the probabilities).

    With a cache (`kv_cache.KVCache`), this step's keys and values are written at slots
    [past_len, past_len + s) and the queries attend to every slot filled so far.
    """
    h, g, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    q = split_heads(linear(x, p["q_proj"]), h, d)  # [b, h, s, d]
    k = split_heads(linear(x, p["k_proj"]), g, d)  # [b, g, s, d]
    v = split_heads(linear(x, p["v_proj"]), g, d)  # [b, g, s, d]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:
        k, v = cache.update(layer, k, v, past_len)  # [b, g, t, d]
    out, probs = scaled_dot_product_attention(q, k, v, mask_bias, 1.0 / math.sqrt(d))
    return linear(merge_heads(out), p["o_proj"]), probs


def silu(x):
    r"""SiLU, or swish (Elfwing et al. 2017): $x\,\sigma(x) = x / (1 + e^{-x})$."""
    return x / (1 + xp_of(x).exp(-x))


def swiglu_mlp(p: dict, x):
    r"""SwiGLU (Shazeer 2020): $W_\text{down}\,(\mathrm{SiLU}(W_\text{gate} x) \odot W_\text{up} x)$.

    The SiLU of one projection gates the other, feature by feature. [b, s, D] -> [b, s, F] -> [b, s, D]
    """
    return linear(silu(linear(x, p["gate_proj"])) * linear(x, p["up_proj"]), p["down_proj"])


def decoder_layer(p: dict, x, cos, sin, mask_bias, config, cache=None, layer: int = 0, past_len: int = 0):
    """One pre-norm residual block: x + Attn(RMSNorm(x)), then + MLP(RMSNorm(x)). [b, s, D] -> [b, s, D]"""
    eps = config.rms_norm_eps
    attn, probs = self_attention(p["self_attn"], rms_norm(x, p["input_layernorm"]["weight"], eps), cos, sin,
                                 mask_bias, config, cache, layer, past_len)
    x = x + attn
    x = x + swiglu_mlp(p["mlp"], rms_norm(x, p["post_attention_layernorm"]["weight"], eps))
    return x, probs


def forward(params: dict, config, input_ids, position_ids=None, attention_mask=None, cache=None, rope=None):
    r"""Logits [b, s, V] for token ids [b, s]: the whole model.

    position_ids [b, s] default to past_len, past_len+1, ...; attention_mask [b, t] (1 = real token)
    to all ones; `rope` = (inv_freq, attention_factor) to plain RoPE. A `cache` is filled in place.
    The head is $x W_\text{lm}^\top$: one score per vocabulary entry, softmax gives the next token.
    """
    xp = xp_of(input_ids)
    b, s = input_ids.shape
    past = cache.length if cache is not None else 0
    if position_ids is None:
        position_ids = xp.broadcast_to(xp.arange(past, past + s, dtype=np.int64)[None], (b, s))
    if attention_mask is None:
        attention_mask = xp.ones((b, past + s), dtype=np.int64)
    inv_freq, attention_factor = rope or (rope_frequencies(config.rope_theta, config.head_dim), 1.0)
    cos, sin = rope_cos_sin(inv_freq, position_ids, attention_factor)  # [b, s, d]
    mask_bias = attention_mask_bias(attention_mask, s, past + s, past)  # [b, 1, s, t]
    x = embed(params["model"]["embed_tokens"]["weight"], input_ids)  # [b, s, D]
    for i, layer_params in enumerate(params["model"]["layers"]):
        x, _ = decoder_layer(layer_params, x, cos, sin, mask_bias, config, cache, i, past)
    if cache is not None:
        cache.length = past + s
    x = rms_norm(x, params["model"]["norm"]["weight"], config.rms_norm_eps)
    return x @ params["lm_head"]["weight"].T  # [b, s, V]
