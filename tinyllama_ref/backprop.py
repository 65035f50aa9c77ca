r"""Volume 2: backpropagation through `llama.py`, by hand, one backward function beside each forward one.

    loss = CE(lm_head(RMSNorm(layers(embed(ids)))), labels)

The chain rule, run from the loss back to the embedding: each `*_backward` takes what its forward
computed (read from the tape) and $\bar y = \partial L / \partial y$, the gradient of the loss with
respect to the forward's output, and returns $\bar x$ for its inputs and the gradients of its
parameters. Shapes as in `llama.py` (b, s, t, h, g, d, D, F, V); $\bar W$ always has W's shape.

The forward is the book's own `llama.forward`, run once with an observer that keeps on a tape (a plain
dict, `TAPE_NAMES`) what the backward needs; nothing else is recorded, and there is no autograd.
With `checkpoint=True` only each layer's input is kept and the layer is run again, forward, just before
its backward (gradient checkpointing: the tape shrinks from every layer's activations to one layer's).
Everything runs in the model's dtype; a float64 model is float64 from end to end (`llama.compute_dtype`).
"""
from __future__ import annotations

import dataclasses
import math


from . import llama
from .backend import xp_of
from .llama import compute_dtype, merge_heads, rotate_half, split_heads

# What the backward reads from the tape: dump names (`parity.py`), a layer's without "layers.N.".
LAYER_TAPE = ("input_layernorm", "self_attn.q_rope", "self_attn.k_rope", "self_attn.v", "self_attn.probs",
              "self_attn.context", "attn_residual", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
              "mlp.act_mul")
BOUNDARIES = ("embed_tokens", "output", "norm")  # each layer's input and the final norm's
TAPE_NAMES = frozenset(BOUNDARIES + LAYER_TAPE)


# ---------------------------------------------------------------- the loss


def cross_entropy_backward(logits, labels, ignore_index: int = -100):
    r"""The causal-LM loss and its gradient $\bar z$ with respect to the logits [b, s, V].

    Position $i$ predicts `labels[i+1]`; with $N$ kept targets and $p = \mathrm{softmax}(z_i)$,
    $$L = -\frac1N \sum_i \log p_{y_{i+1}}, \qquad \bar z_i = \frac{p - \mathrm{onehot}(y_{i+1})}{N}$$
    for kept positions, and $\bar z_i = 0$ for ignored ones and the last position. Returns (loss, $\bar z$).
    """
    xp = xp_of(logits)
    targets = xp.concatenate([labels[:, 1:], xp.full_like(labels[:, :1], ignore_index)], axis=1)  # [b, s]
    keep = targets != ignore_index
    n = keep.sum()  # stays on the device: no read back
    z = logits.astype(compute_dtype(logits.dtype), copy=False)
    z = z - z.max(axis=-1, keepdims=True)
    e = xp.exp(z)
    total = e.sum(axis=-1, keepdims=True)
    safe = xp.where(keep, targets, 0)[..., None]  # ignored rows pick column 0, then weigh nothing
    picked = xp.take_along_axis(z, safe, axis=-1)[..., 0] - xp.log(total[..., 0])  # log p of the target
    loss = -(picked * keep).sum() / n  # NaN when every target is ignored, as in torch
    d_logits = e
    d_logits /= total  # the softmax, in place of the exponentials
    d_logits.reshape(-1, d_logits.shape[-1])[xp.arange(keep.size), safe.reshape(-1)] -= 1  # minus the one-hot
    d_logits *= (keep / xp.maximum(n, 1))[..., None].astype(d_logits.dtype)
    return loss, d_logits.astype(logits.dtype, copy=False)


# ---------------------------------------------------------------- the blocks of a layer, in the book's order


def sub_tape(tape: dict, prefix: str) -> dict:
    """The tape's entries under `prefix` ("layers.3.", "mlp."), named without it."""
    return {k[len(prefix):]: v for k, v in tape.items() if k.startswith(prefix)}


def embed_backward(input_ids, d_x, vocab_size: int):
    r"""The embedding is a row lookup, so its gradient is a scatter-add: $\bar E_v = \sum_{n:\,\mathrm{ids}_n = v} \bar x_n$.

    A token that appears twice gets both gradients; rows of tokens never seen stay 0. [b, s, D] -> [V, D]
    """
    xp = xp_of(d_x)
    d_table = xp.zeros((vocab_size, d_x.shape[-1]), dtype=d_x.dtype)
    xp.add.at(d_table, input_ids.reshape(-1), d_x.reshape(-1, d_x.shape[-1]))
    return d_table


def rms_norm_backward(x, weight, eps: float, d_y):
    r"""RMSNorm's gradients. With $r = (\mathrm{mean}(x^2) + \epsilon)^{-1/2}$, $n = x r$ and $y = w \odot n$:
    $$\bar w = \sum_{b,s} \bar y \odot n, \qquad \bar x = r\,\big(\bar n - n\,\mathrm{mean}(\bar n \odot n)\big),
      \quad \bar n = \bar y \odot w$$
    (the second term: every feature moves $r$, so each one's gradient flows through all of them).
    Computed in float32 (float64 for float64) as the forward. Returns ($\bar x$, $\bar w$).
    """
    xp = xp_of(x)
    acc = compute_dtype(x.dtype)
    x32, dy = x.astype(acc, copy=False), d_y.astype(acc, copy=False)
    r = 1 / xp.sqrt(xp.mean(x32 * x32, axis=-1, keepdims=True) + eps)  # [..., 1]
    n = x32 * r
    d_w = (dy * n).reshape(-1, x.shape[-1]).sum(axis=0)
    d_n = dy * weight
    d_x = r * (d_n - n * xp.mean(d_n * n, axis=-1, keepdims=True))
    return d_x.astype(x.dtype, copy=False), d_w.astype(weight.dtype, copy=False)


def apply_rope_backward(d_y, cos, sin):
    r"""RoPE rotates each pair by $m\theta_i$; the gradient turns back by $-m\theta_i$ (the transposed rotation):
    $$\bar x = \bar y \cos - \mathrm{rot}(\bar y \sin)$$
    since $y = x \cos + \mathrm{rot}(x) \sin$ and $\mathrm{rot}^\top = -\mathrm{rot}$. [b, heads, s, d]
    """
    cos, sin = cos[:, None].astype(d_y.dtype, copy=False), sin[:, None].astype(d_y.dtype, copy=False)
    return d_y * cos - rotate_half(d_y * sin)


def linear_backward(x, p: dict, d_y):
    r"""$y = x W^\top + b$: $\;\bar x = \bar y\, W$, $\;\bar W = \bar y^\top x$ and $\bar b = \sum \bar y$ over every
    row (batch and positions). x [..., in], $\bar y$ [..., out] -> ($\bar x$, {"weight": [out, in], "bias": [out]})."""
    d_x = d_y @ p["weight"]
    d_y2 = d_y.reshape(-1, d_y.shape[-1])
    grads = {"weight": d_y2.T @ x.reshape(-1, x.shape[-1])}
    if p.get("bias") is not None:
        grads["bias"] = d_y2.sum(axis=0)
    return d_x, grads


def softmax_backward(probs, d_probs):
    r"""With $p = \mathrm{softmax}(z)$ along the last axis: $\bar z = p \odot (\bar p - \sum_j \bar p_j p_j)$
    (the Jacobian $\mathrm{diag}(p) - p p^\top$ applied to $\bar p$). Masked entries have $p = 0$, so get 0."""
    d_scores = d_probs - (d_probs * probs).sum(axis=-1, keepdims=True)
    d_scores *= probs  # in place: one [b, h, s, t] array fewer
    return d_scores


def scaled_dot_product_attention_backward(q, k, v, probs, d_out, scale: float):
    r"""The gradients of $o = \mathrm{softmax}(c\,q k^\top + M)\,v$ with $c = 1/\sqrt d$ and grouped key/value heads:
    $$\bar v = P^\top \bar o, \quad \bar P = \bar o\, v^\top, \quad \bar S = \mathrm{softmax}'(\bar P), \quad
      \bar q = c\,\bar S\, k, \quad \bar k = c\,\bar S^\top q$$
    The mask M is a constant. (A query with no visible key, a left pad, is uniform in the forward: the mask
    swallowed its scores. Its $\bar S$ is still the formula's, as torch autograd gives; it only matters if the
    pad's own prediction is in the loss.) As in the forward, the h/g query heads of a group are stacked on the query axis,
    so $\bar k$ and $\bar v$ sum over the heads that share them in the same matmul.
    q [b, h, s, d]; k, v [b, g, t, d]; probs [b, h, s, t]; d_out [b, h, s, d] -> ($\bar q$, $\bar k$, $\bar v$)
    """
    b, h, s, d = q.shape
    g, t = k.shape[1], k.shape[2]
    qg, d_og = q.reshape(b, g, (h // g) * s, d), d_out.reshape(b, g, (h // g) * s, d)
    pg = probs.reshape(b, g, (h // g) * s, t)  # [b, g, rep*s, t]
    d_v = pg.swapaxes(-1, -2) @ d_og  # [b, g, t, d]
    d_scores = softmax_backward(pg, d_og @ v.swapaxes(-1, -2))  # [b, g, rep*s, t]
    d_scores *= q.dtype.type(scale)
    d_q = (d_scores @ k).reshape(b, h, s, d)
    d_k = d_scores.swapaxes(-1, -2) @ qg  # [b, g, t, d]
    return d_q, d_k, d_v


def silu_mul_backward(gate, up, d_y):
    r"""$y = \mathrm{SiLU}(g) \odot u$: $\;\bar u = \bar y \odot \mathrm{SiLU}(g)$, $\;\bar g = \bar y \odot u \odot
    (\sigma(g) + \mathrm{SiLU}(g)\,(1 - \sigma(g)))$, the derivative of $g\,\sigma(g)$. Returns ($\bar g$, $\bar u$)."""
    sig = 1 / (1 + xp_of(gate).exp(-gate))
    silu_g = gate * sig
    return d_y * up * (sig + silu_g * (1 - sig)), d_y * silu_g


def self_attention_backward(p: dict, tape: dict, x_norm, cos, sin, config, d_out):
    r"""Back through `llama.self_attention`: o_proj, the attention, RoPE, then the q, k and v projections,
    whose three input gradients add up (x fed all three). Returns ($\bar x$, the parameter gradients)."""
    d = config.head_dim
    d_context, g_o = linear_backward(tape["context"], p["o_proj"], d_out)
    d_q, d_k, d_v = scaled_dot_product_attention_backward(tape["q_rope"], tape["k_rope"], tape["v"], tape["probs"],
                                                          split_heads(d_context, d), 1.0 / math.sqrt(d))
    d_x = 0
    grads = {"o_proj": g_o}
    for name, d_heads in (("q_proj", apply_rope_backward(d_q, cos, sin)), ("k_proj", apply_rope_backward(d_k, cos, sin)),
                          ("v_proj", d_v)):
        d_in, grads[name] = linear_backward(x_norm, p[name], merge_heads(d_heads))
        d_x = d_x + d_in
    return d_x, grads


def swiglu_mlp_backward(p: dict, tape: dict, x_norm, d_out):
    r"""Back through `llama.swiglu_mlp`: down_proj, the gated product, then gate_proj and up_proj (their input
    gradients add up). Returns ($\bar x$, the parameter gradients)."""
    d_act, g_down = linear_backward(tape["act_mul"], p["down_proj"], d_out)
    d_gate, d_up = silu_mul_backward(tape["gate_proj"], tape["up_proj"], d_act)
    d_x_gate, g_gate = linear_backward(x_norm, p["gate_proj"], d_gate)
    d_x_up, g_up = linear_backward(x_norm, p["up_proj"], d_up)
    return d_x_gate + d_x_up, {"gate_proj": g_gate, "up_proj": g_up, "down_proj": g_down}


def decoder_layer_backward(p: dict, tape: dict, x, cos, sin, config, d_out):
    r"""Back through one pre-norm block. A residual $y = x + f(x)$ passes $\bar y$ straight through and adds
    $f$'s own: $\bar x = \bar y + J_f^\top \bar y$. `tape` holds the layer's names without "layers.N.";
    x is the layer's input. Returns ($\bar x$, the layer's parameter gradients, shaped as its params)."""
    eps = config.rms_norm_eps
    d_mid, g_mlp = swiglu_mlp_backward(p["mlp"], sub_tape(tape, "mlp."), tape["post_attention_layernorm"], d_out)
    d_attn_residual, g_post = rms_norm_backward(tape["attn_residual"], p["post_attention_layernorm"]["weight"], eps,
                                                d_mid)
    d_attn_residual = d_attn_residual + d_out
    d_norm, g_attn = self_attention_backward(p["self_attn"], sub_tape(tape, "self_attn."), tape["input_layernorm"],
                                             cos, sin, config, d_attn_residual)
    d_x, g_in = rms_norm_backward(x, p["input_layernorm"]["weight"], eps, d_norm)
    grads = {"self_attn": g_attn, "mlp": g_mlp, "input_layernorm": {"weight": g_in},
             "post_attention_layernorm": {"weight": g_post}}
    return d_x + d_attn_residual, grads


def lm_head_backward(params: dict, x, d_logits):
    r"""logits $= x W_\text{lm}^\top$: $\;\bar x = \bar z\, W_\text{lm}$, $\;\bar W_\text{lm} = \bar z^\top x$. [b, s, D], [b, s, V]"""
    return linear_backward(x, params["lm_head"], d_logits)


# ---------------------------------------------------------------- the whole model


def transformer_backward(params: dict, config, tape: dict, input_ids, cos, sin, d_hidden, rerun_layer=None):
    r"""From $\bar h$ (the final norm's output) back to the embedding: the final norm, every layer in reverse,
    the scatter-add. `rerun_layer(i, x)` (gradient checkpointing) gives layer i's tape again. Returns the
    gradients of `params["model"]`."""
    m = params["model"]
    n_layers = len(m["layers"])
    layer_input = lambda i: tape["embed_tokens"] if i == 0 else tape[f"layers.{i - 1}.output"]  # noqa: E731
    d_x, g_norm = rms_norm_backward(layer_input(n_layers), m["norm"]["weight"], config.rms_norm_eps, d_hidden)
    layer_grads = [None] * n_layers
    for i in reversed(range(n_layers)):
        x = layer_input(i)
        taped = sub_tape(tape, f"layers.{i}.") if rerun_layer is None else rerun_layer(i, x)
        d_x, layer_grads[i] = decoder_layer_backward(m["layers"][i], taped, x, cos, sin, config, d_x)
    d_embed = embed_backward(input_ids, d_x, m["embed_tokens"]["weight"].shape[0])
    if config.pad_token_id is not None:  # transformers' embedding has padding_idx: the pad row learns nothing
        d_embed[config.pad_token_id] = 0
    return {"embed_tokens": {"weight": d_embed}, "layers": layer_grads, "norm": {"weight": g_norm}}


def check_trainable(model) -> None:
    """Refuse, in one line, a model whose forward this file has no backward for."""
    c = model.config
    refusals = [
        (c.head != "causal_lm", f"training needs a causal-LM head; this model's is {c.head!r}"),
        (c.is_open_llama, "training Open-Llama (its stable embedding's LayerNorm) is not supported"),
        (c.hidden_act not in ("silu", "swish"), f"training supports hidden_act 'silu' only; this model's is "
                                                f"{c.hidden_act!r}"),
        (model.quantize is not None, f"a {model.quantize} model cannot be trained: load it without quantize="),
        (model.dtype == "float16", "train in float32 or float64: float16 has no BLAS matmul on the CPU"),
        (getattr(model, "comm", None) is not None, "a model split over ranks (tensor_parallel) cannot be trained: "
                                                   "load it whole"),
    ]
    for refused, why in refusals:
        if refused:
            raise ValueError(why)


def value_and_grad(model, input_ids, labels, attention_mask=None, checkpoint: bool = False):
    r"""The causal-LM loss of `model` on a batch and its gradient for every parameter: (loss, grads).

    loss is transformers' `LlamaForCausalLM(..., labels=labels).loss`: position i predicts labels[i+1],
    labels of -100 are skipped, the mean is over the kept ones. grads has exactly the keys and shapes of
    `model.params`; a tied head is one array with one gradient, the sum of both uses. input_ids and labels
    [b, s]; attention_mask [b, s] (1 = real token; left padding works). `checkpoint`: keep only each layer's
    input, and run the layer again before its backward.
    """
    from .model import check_inputs, check_labels, recorder

    check_trainable(model)
    params, config, xp = model.params, model.config, model.xp
    ids = model.as_input(input_ids)
    mask = None if attention_mask is None else model.as_input(attention_mask, "attention_mask")
    ids, mask, positions, _, furthest = check_inputs(config, ids, mask, None, None, xp)
    labels = model.as_input(labels, "labels")  # checked where it is (host labels: no device read), then moved
    labels = xp.asarray(check_labels(labels, 0, *ids.shape, xp_of(labels), config.vocab_size))
    rope = model.rope.for_positions(positions, furthest)

    tape = {}
    kept = frozenset(BOUNDARIES) if checkpoint else TAPE_NAMES
    ops = dataclasses.replace(model.ops, observe=recorder(tape, kept))
    logits = llama.forward(params, config, ids, positions, mask, None, rope, ops)  # the book's forward, taped
    loss, d_logits = cross_entropy_backward(logits, labels)
    del logits
    cos, sin = llama.rope_tables(config, positions, rope, tape["embed_tokens"].dtype)  # as the forward made them
    d_hidden, g_head = lm_head_backward(params, tape["norm"], d_logits)
    rerun = None
    if checkpoint:
        mask_bias = llama.attention_mask_bias(mask, ids.shape[1], ids.shape[1], 0)
        layer_ops = dataclasses.replace(model.ops, observe=recorder(layer_taped := {}, frozenset(LAYER_TAPE)))

        def rerun(i, x):
            layer_taped.clear()
            llama.decoder_layer(params["model"]["layers"][i], x, cos, sin, mask_bias, config, None, i, layer_ops)
            return sub_tape(layer_taped, f"layers.{i}.")

    grads = {"model": transformer_backward(params, config, tape, ids, cos, sin, d_hidden, rerun)}
    if params["lm_head"]["weight"] is params["model"]["embed_tokens"]["weight"]:  # tied: one array, one gradient
        grads["model"]["embed_tokens"]["weight"] += g_head["weight"]
        g_head = grads["model"]["embed_tokens"]
    grads["lm_head"] = g_head
    return loss, grads

