r"""LLaMA in one file, in the order of the paper (Touvron et al. 2023; Llama 2: grouped-query attention).

    tokens -> embedding
           -> N x [ x += Attention(RMSNorm(x));  x += SwiGLU(RMSNorm(x)) ]
           -> RMSNorm -> logits

Every function is pure and takes plain arrays, NumPy or CuPy (`xp_of` finds the module from its
inputs), and parameter dicts keyed by the checkpoint's own names (`q_proj`, `gate_proj`, ...).
Weights keep PyTorch's `nn.Linear` layout [out, in], so a linear layer is $x W^\top$.
Shapes: b = batch, s = new tokens, t = tokens attended to (cache + new), h = query heads,
g = key/value heads, d = head_dim, D = hidden_size, F = intermediate_size, V = vocab_size.
One decoder layer and one forward run for every model: the variants, in modules of their own, hand in
their RoPE frequencies or operations (`LayerOps`) chosen once when a model is built (`model.layer_ops`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .backend import xp_of

F32 = np.float32


def compute_dtype(dtype):
    """The dtype of the sensitive steps (RMSNorm, RoPE's tables, softmax, the loss): float32 for float32 and
    float16 models, as transformers does, and float64 for a float64 model, so that it is float64 throughout."""
    return np.promote_types(dtype, F32)


def embed(p: dict, input_ids):
    """Token embedding: row `i` of the [V, D] table `embed_tokens` is token i's vector. [b, s] -> [b, s, D]"""
    return p["embed_tokens"]["weight"][input_ids]


def rms_norm(x, weight, eps: float):
    r"""RMSNorm (Zhang & Sennrich 2019): $y = w \odot x / \sqrt{\mathrm{mean}(x^2) + \epsilon}$.

    No mean subtraction and no bias. Computed in float32 (float64 for float64), as the reference does.
    """
    xp = xp_of(x)
    x32 = x.astype(compute_dtype(x.dtype), copy=False)
    variance = xp.mean(x32 * x32, axis=-1, keepdims=True)
    return weight * (x32 / xp.sqrt(variance + eps)).astype(x.dtype, copy=False)


def rope_frequencies(theta: float, head_dim: int) -> np.ndarray:
    r"""RoPE's frequencies (Su et al. 2021): $\theta_i = b^{-2i/d}$ for $i = 0 \dots d/2-1$ (float32, NumPy).

    Feature pair $i$ of a query or key at position $m$ turns by the angle $m\,\theta_i$: fast for
    the first pairs, slow for the last. The scaled variants in `rope_scaling.py` replace these.
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(F32) / F32(head_dim)  # 2i/d
    powers = np.float64(F32(theta)) ** exponents.astype(np.float64)  # in float64, rounded once: torch's last bit
    return (F32(1.0) / powers.astype(F32)).astype(F32)


def rope_cos_sin(inv_freq, position_ids, attention_factor: float = 1.0, dtype=F32):
    r"""cos and sin of $m\,\theta_i$ for each position: [b, s] -> two [b, s, d] arrays, in `dtype` (float32).
    The frequencies are repeated ([θ0..θ(d/2-1), θ0..θ(d/2-1)]) to match the rotate-half pairing."""
    xp = xp_of(position_ids)
    freqs = position_ids[..., None].astype(dtype) * xp.asarray(inv_freq).astype(dtype)  # [b, s, d/2]
    emb = xp.concatenate([freqs, freqs], axis=-1)  # [b, s, d]
    factor = np.dtype(dtype).type(attention_factor)
    return xp.cos(emb) * factor, xp.sin(emb) * factor


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
    instead; `formats/qk_permutation.py` permutes the weights between the two layouts.)
    x [b, heads, s, d]; cos, sin [b, s, d] broadcast over the heads.
    """
    cos, sin = cos[:, None].astype(x.dtype, copy=False), sin[:, None].astype(x.dtype, copy=False)
    return x * cos + rotate_half(x) * sin


def linear(x, p: dict):
    r"""$y = x W^\top + b$ with W [out, in] (the bias is optional): [..., in] -> [..., out]."""
    y = x @ p["weight"].T
    if p.get("bias") is not None:
        y = y + p["bias"]
    return y


def split_heads(x, head_dim: int):
    """[b, s, n*d] -> [b, n, s, d]: the heads are as many as fit (`n` = width // d)."""
    b, s, _ = x.shape
    return x.reshape(b, s, -1, head_dim).transpose(0, 2, 1, 3)


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
    """Numerically stable softmax in float32 or float64 (subtract the row maximum before exp)."""
    xp = xp_of(scores)
    s = scores.astype(compute_dtype(scores.dtype), copy=False)
    e = s - s.max(axis=axis, keepdims=True)
    xp.exp(e, out=e)  # in place, as the division: one [b, h, s, t] array, not three
    e /= e.sum(axis=axis, keepdims=True)
    return e


def repeat_kv(x, n_rep: int):
    """Grouped-query attention: `n_rep` query heads share each key/value head. [b, g, t, d] -> [b, g*n_rep, t, d],
    head j of the result being head j // n_rep of the input (torch.repeat_interleave's order on the heads)."""
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
    scores = qg @ k.swapaxes(-1, -2)  # [b, g, rep*s, t]
    scores *= q.dtype.type(scale)  # in place, as the mask: the scores are this function's own
    scores = scores.reshape(b, g, h // g, s, t).astype(compute_dtype(q.dtype), copy=False)
    scores += mask_bias[:, :, None]
    probs = softmax(scores).astype(q.dtype, copy=False)  # [b, g, rep, s, t]
    out = probs.reshape(b, g, (h // g) * s, t) @ v  # [b, g, rep*s, d]
    return out.reshape(b, h, s, d), probs.reshape(b, h, s, t)


def silu(x):
    r"""SiLU, or swish (Elfwing et al. 2017): $x\,\sigma(x) = x / (1 + e^{-x})$."""
    return x / (1 + xp_of(x).exp(-x))


def silu_mul(gate, up):
    r"""SwiGLU's gate (Shazeer 2020): $\mathrm{SiLU}(g) \odot u$, feature by feature. [b, s, F] -> [b, s, F]"""
    return silu(gate) * up


def ignore(prefix: str, **named) -> None:
    """The observer when nobody is watching: it keeps nothing."""


@dataclass(frozen=True)
class LayerOps:
    r"""The operations a variant hands to the layer, chosen once when a model is built (`model.layer_ops`).

    The defaults are this file's functions: the paper's model. `column_linear` and `row_linear` (Meta's
    `ColumnParallelLinear` and `RowParallelLinear`) are $x W^\top + b$ for the projections that make
    features (q, k, v, gate, up) and those that sum them back (o, down): `pretraining_tp` slices them; across
    ranks `row_linear` all-reduces, `embed` and `head_linear` gather (`tensor_parallel.py`). `act_mul`: the
    gated product, fused on CuPy with `rms_norm` and `apply_rope`; Open-Llama's `embed` adds a LayerNorm.
    """

    column_linear: Callable = linear
    column_linears: Callable | None = None  # q, k, v (gate, up) in one product, packed at load (`packing.py`)
    row_linear: Callable = linear
    act_mul: Callable = silu_mul
    rms_norm: Callable = rms_norm
    apply_rope: Callable = apply_rope
    embed: Callable = embed
    head_linear: Callable = linear
    observe: Callable = ignore


PAPER = LayerOps()  # the model exactly as written above


def project(ops: LayerOps, x, *ps):
    """x through the column projections ps of one input (q, k, v; gate, up): one product if packed, else each."""
    together = ops.column_linears(x, *ps) if ops.column_linears and ops.column_linear is linear else None
    return together if together is not None else [ops.column_linear(x, p) for p in ps]


def self_attention(p: dict, x, cos, sin, mask_bias, config, cache=None, layer: int = 0, ops: LayerOps = PAPER):
    """Grouped-query self-attention with RoPE: [b, s, D] -> [b, s, D]. With a cache (`kv_cache.KVCache`),
    the new keys and values are appended to the layer's, and the queries attend to all t of them."""
    d = config.head_dim
    q, k, v = (split_heads(y, d) for y in project(ops, x, p["q_proj"], p["k_proj"], p["v_proj"]))  # [b, h|g, s, d]
    q_rope, k_rope = ops.apply_rope(q, cos, sin), ops.apply_rope(k, cos, sin)
    keys, values = (k_rope, v) if cache is None else cache.update(layer, k_rope, v)  # [b, g, t, d]
    out, probs = scaled_dot_product_attention(q_rope, keys, values, mask_bias, 1.0 / math.sqrt(d))
    context = merge_heads(out)  # [b, s, h*d]
    o_proj = ops.row_linear(context, p["o_proj"])  # [b, s, D]
    ops.observe(f"layers.{layer}.self_attn", q=q, k=k, v=v, q_rope=q_rope, k_rope=k_rope, probs=probs,
                context=context, o_proj=o_proj)
    return o_proj


def swiglu_mlp(p: dict, x, layer: int = 0, ops: LayerOps = PAPER):
    r"""SwiGLU (Shazeer 2020): $W_\text{down}\,(\mathrm{SiLU}(W_\text{gate} x) \odot W_\text{up} x)$.

    The SiLU of one projection gates the other, feature by feature. [b, s, D] -> [b, s, F] -> [b, s, D]
    """
    gate, up = project(ops, x, p["gate_proj"], p["up_proj"])  # [b, s, F] each
    act_mul = ops.act_mul(gate, up)  # [b, s, F]
    down = ops.row_linear(act_mul, p["down_proj"])  # [b, s, D]
    ops.observe(f"layers.{layer}.mlp", gate_proj=gate, up_proj=up, act_mul=act_mul, down_proj=down)
    return down


def decoder_layer(p: dict, x, cos, sin, mask_bias, config, cache=None, layer: int = 0, ops: LayerOps = PAPER):
    """One pre-norm residual block: x + Attn(RMSNorm(x)), then + MLP(RMSNorm(x)). [b, s, D] -> [b, s, D]"""
    eps = config.rms_norm_eps
    x_norm = ops.rms_norm(x, p["input_layernorm"]["weight"], eps)
    attn_residual = x + self_attention(p["self_attn"], x_norm, cos, sin, mask_bias, config, cache, layer, ops)
    attn_norm = ops.rms_norm(attn_residual, p["post_attention_layernorm"]["weight"], eps)
    output = attn_residual + swiglu_mlp(p["mlp"], attn_norm, layer, ops)
    ops.observe(f"layers.{layer}", input_layernorm=x_norm, attn_residual=attn_residual,
                post_attention_layernorm=attn_norm, output=output)
    return output


def rope_tables(config, position_ids, rope=None, dtype=F32):
    """cos, sin [b, s, d] for every layer, once per forward; `rope` = (inv_freq, attention_factor) or plain."""
    inv_freq, attention_factor = rope or (rope_frequencies(config.rope_theta, config.head_dim), 1.0)
    cos, sin = rope_cos_sin(inv_freq, position_ids, attention_factor, compute_dtype(dtype))
    return cos.astype(dtype, copy=False), sin.astype(dtype, copy=False)


def transformer(params: dict, config, input_ids, position_ids=None, attention_mask=None, cache=None, rope=None,
                ops: LayerOps = PAPER):
    r"""The hidden states [b, s, D] for token ids [b, s]: embedding, every layer, the final RMSNorm.

    position_ids [b, s] default to t0, t0+1, ... (t0 = the tokens in `cache`, which is filled in place);
    attention_mask [b, t] (1 = real token) to all ones; `rope` = (inv_freq, attention_factor) to plain RoPE.
    """
    xp = xp_of(input_ids)
    b, s = input_ids.shape
    past = cache.length if cache is not None else 0
    if position_ids is None:
        position_ids = xp.broadcast_to(xp.arange(past, past + s, dtype=np.int64)[None], (b, s))
    if attention_mask is None:
        attention_mask = xp.ones((b, past + s), dtype=np.int64)
    x = ops.embed(params["model"], input_ids)  # [b, s, D]
    ops.observe("", embed_tokens=x)
    cos, sin = rope_tables(config, position_ids, rope, x.dtype)  # [b, s, d]
    mask_bias = attention_mask_bias(attention_mask, s, past + s, past)  # [b, 1, s, t]
    for i, layer_params in enumerate(params["model"]["layers"]):
        x = decoder_layer(layer_params, x, cos, sin, mask_bias, config, cache, i, ops)
    x = ops.rms_norm(x, params["model"]["norm"]["weight"], config.rms_norm_eps)
    ops.observe("", norm=x)
    return x


def lm_head(params: dict, x, logits_to_keep=0, ops: LayerOps = PAPER):
    r"""Next-token scores $x W_\text{lm}^\top$, one per vocabulary entry: [b, s, D] -> [b, s_kept, V] for every
    position (0), the last k (int k) or given indices, as transformers' `logits_to_keep`."""
    if isinstance(logits_to_keep, (int, np.integer)):
        x = x if logits_to_keep == 0 else x[:, -int(logits_to_keep):]
    else:
        x = x[:, xp_of(x).asarray(logits_to_keep)]
    return ops.head_linear(x, params["lm_head"])


def forward(params: dict, config, input_ids, position_ids=None, attention_mask=None, cache=None, rope=None,
            ops: LayerOps = PAPER, logits_to_keep=0):
    """Logits [b, s, V] for token ids [b, s]: the whole model, `transformer` then `lm_head`."""
    x = transformer(params, config, input_ids, position_ids, attention_mask, cache, rope, ops)
    return lm_head(params, x, logits_to_keep, ops)
