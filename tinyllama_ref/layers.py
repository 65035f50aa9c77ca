r"""The layers of a LLaMA decoder, one pure function per idea.

Every function takes plain arrays (NumPy or CuPy: `xp_of` picks the module from the inputs) and a
parameter dict whose keys are the checkpoint's own names (`q_proj`, `gate_proj`, ...). Weights keep
Hugging Face's `nn.Linear` layout, [out_features, in_features], so a linear layer is $x W^\top$.
Shapes: b = batch, s = new tokens, t = all tokens attended to (cache + new), h = heads,
g = key/value heads, d = head_dim, D = hidden_size, F = intermediate_size, V = vocab_size.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import xp_of

F32 = np.float32


def linear(x, p: dict):
    """$y = x W^\\top + b$ with W [out, in] (bias optional): [..., in] -> [..., out]."""
    y = x @ p["weight"].T
    if p.get("bias") is not None:
        y = y + p["bias"]
    return y


def linear_tp(x, p: dict, tp: int, split: str):
    """`linear` computed in `tp` slices, as Meta's tensor-parallel pretraining did (`pretraining_tp`).

    split="out": each slice makes some output features, concatenated (q/k/v, gate, up).
    split="in": each slice sees some input features, partial products summed (o_proj, down_proj).
    Mathematically equal to `linear`; kept so that checkpoints that ask for it are reproduced.
    """
    if tp == 1:
        return linear(x, p)
    xp = xp_of(x)
    w = p["weight"]
    if split == "out":
        y = xp.concatenate([x @ wi.T for wi in xp.split(w, tp, axis=0)], axis=-1)
    else:
        xs = xp.split(x, tp, axis=-1)
        y = sum(xi @ wi.T for xi, wi in zip(xs, xp.split(w, tp, axis=1)))
    if p.get("bias") is not None:
        y = y + p["bias"]
    return y


def embed(weight, input_ids):
    """Token embedding: look up rows of the [V, D] table: [b, s] -> [b, s, D]."""
    return weight[input_ids]


def rms_norm(x, weight, eps: float):
    r"""RMSNorm (Zhang & Sennrich 2019): $y = w \odot x / \sqrt{\mathrm{mean}(x^2) + \epsilon}$.

    No mean subtraction and no bias. Computed in float32 whatever the input dtype, as the reference does.
    """
    xp = xp_of(x)
    x32 = x.astype(F32)
    variance = xp.mean(x32 * x32, axis=-1, keepdims=True)
    return weight * (x32 / xp.sqrt(variance + F32(eps))).astype(x.dtype)


def layer_norm(x, weight, bias, eps: float = 1e-5):
    r"""LayerNorm (Ba et al. 2016): $y = w \odot (x - \mu)/\sqrt{\sigma^2 + \epsilon} + b$.

    Open-Llama's "stable embedding" applies it right after the token embedding.
    """
    xp = xp_of(x)
    x32 = x.astype(F32)
    mu = xp.mean(x32, axis=-1, keepdims=True)
    var = xp.mean((x32 - mu) ** 2, axis=-1, keepdims=True)
    return ((x32 - mu) / xp.sqrt(var + F32(eps)) * weight + bias).astype(x.dtype)


def _erf(x):
    """erf(x) from Numerical Recipes' Chebyshev fit of erfc (fractional error < 1.2e-7).

    NumPy has no erf and SciPy is not a dependency; exact GELU needs it.
    """
    xp = xp_of(x)
    z = xp.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    r = t * xp.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
    return xp.where(x >= 0, 1.0 - r, r - 1.0).astype(x.dtype)


def activation(name: str):
    """The activation function a config names (`hidden_act`)."""

    def silu(x):  # x * sigmoid(x), LLaMA's choice
        xp = xp_of(x)
        return x / (1 + xp.exp(-x))

    def relu(x):
        return x * (x > 0)

    def gelu_tanh(x):
        xp = xp_of(x)
        return 0.5 * x * (1 + xp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    def gelu(x):
        return 0.5 * x * (1 + _erf(x / math.sqrt(2)))

    return {"silu": silu, "swish": silu, "relu": relu, "gelu": gelu,
            "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh}[name]


def tap(trace: dict | None, name: str, x):
    """Record an intermediate under a stable name when tracing (the parity kit's `dump`); return it unchanged."""
    if trace is not None:
        trace[name] = x
    return x


def swiglu_mlp(p: dict, x, act, tp: int = 1, trace: dict | None = None, prefix: str = "mlp."):
    r"""The SwiGLU feed-forward block (Shazeer 2020): $W_\text{down}\,(\mathrm{SiLU}(W_\text{gate} x) \odot W_\text{up} x)$.

    [b, s, D] -> gate, up [b, s, F] -> [b, s, D]
    """
    gate = tap(trace, prefix + "gate_proj", linear_tp(x, p["gate_proj"], tp, "out"))
    up = tap(trace, prefix + "up_proj", linear_tp(x, p["up_proj"], tp, "out"))
    hidden = tap(trace, prefix + "act_mul", act(gate) * up)
    return tap(trace, prefix + "down_proj", linear_tp(hidden, p["down_proj"], tp, "in"))


def repeat_kv(x, n_rep: int):
    """Grouped-query attention: let `n_rep` query heads share each key/value head.

    [b, g, t, d] -> [b, g*n_rep, t, d], head j of the result being head j // n_rep of the input
    (the same order as torch.repeat_interleave on the heads axis).
    """
    if n_rep == 1:
        return x
    b, g, t, d = x.shape
    xp = xp_of(x)
    return xp.broadcast_to(x[:, :, None], (b, g, n_rep, t, d)).reshape(b, g * n_rep, t, d)


def softmax(scores, axis: int = -1):
    """Numerically stable softmax in float32 (subtract the row maximum before exp)."""
    xp = xp_of(scores)
    s = scores.astype(F32)
    e = xp.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


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
    scores = scores.reshape(b, g, h // g, s, t)
    if mask_bias is not None:
        scores = scores.astype(F32) + mask_bias[:, :, None]  # [b, 1, 1, s, t] broadcasts over heads
    probs = softmax(scores).astype(q.dtype)  # [b, g, rep, s, t]
    out = probs.reshape(b, g, (h // g) * s, t) @ v  # [b, g, rep*s, d]
    return out.reshape(b, h, s, d), probs.reshape(b, h, s, t)


def split_heads(x, n_heads: int, head_dim: int):
    """[b, s, n*d] -> [b, n, s, d]"""
    b, s, _ = x.shape
    return x.reshape(b, s, n_heads, head_dim).transpose(0, 2, 1, 3)


def merge_heads(x):
    """[b, n, s, d] -> [b, s, n*d]"""
    b, n, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, n * d)
