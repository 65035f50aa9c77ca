"""The decoder layer again, built from `llama.py`'s functions one named step at a time.

Five things need to reach inside a layer: the parity kit's `dump`, which records every intermediate
under a stable name (`parity.py` lists them), `pretraining_tp`, which computes each projection in
slices (`tensor_parallel.py`), an activation other than SiLU (`activations.py`), int8/int4 weights,
each dequantized just before its product (`quantize.dequantizing`), and on CuPy the fused kernels of
`fused.py`. None of them is written into the core. `model.forward` runs this layer
instead of `llama.decoder_layer` when one of them is asked for. With the plain projection it is the
same computation, op for op: tests/test_instrumented.py checks the logits are bit-identical.
"""
from __future__ import annotations

import math

from .activations import activation
from .llama import apply_rope, linear, merge_heads, rms_norm, scaled_dot_product_attention, split_heads


def plain_projection(x, p: dict, split: str):
    """`llama.linear`; `split` ("out" or "in") matters only to `tensor_parallel.sliced_projection`."""
    return linear(x, p)


def decoder_layer(p: dict, x, cos, sin, mask_bias, config, cache, layer: int, past_len: int,
                  trace: dict | None = None, project=plain_projection, kernels=None):
    """`llama.decoder_layer`, storing each step in `trace` as "layers.{layer}.<name>" when given one.

    `kernels` (`fused.KERNELS` on CuPy) replaces the layer's RMSNorm, RoPE and activation product.
    """
    h, g, d, eps = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.rms_norm_eps
    a, m, t = p["self_attn"], p["mlp"], {}
    norm, rope = (kernels.rms_norm, kernels.apply_rope) if kernels else (rms_norm, apply_rope)
    t["input_layernorm"] = xn = norm(x, p["input_layernorm"]["weight"], eps)
    t["self_attn.q"] = q = split_heads(project(xn, a["q_proj"], "out"), h, d)  # [b, h, s, d]
    t["self_attn.k"] = k = split_heads(project(xn, a["k_proj"], "out"), g, d)  # [b, g, s, d]
    t["self_attn.v"] = v = split_heads(project(xn, a["v_proj"], "out"), g, d)  # [b, g, s, d]
    t["self_attn.q_rope"] = q = rope(q, cos, sin)
    t["self_attn.k_rope"] = k = rope(k, cos, sin)
    if cache is not None:
        k, v = cache.update(layer, k, v, past_len)  # [b, g, t, d]
    out, t["self_attn.probs"] = scaled_dot_product_attention(q, k, v, mask_bias, 1.0 / math.sqrt(d))
    t["self_attn.context"] = out = merge_heads(out)  # [b, s, h*d]
    t["self_attn.o_proj"] = out = project(out, a["o_proj"], "in")
    t["attn_residual"] = x = x + out
    t["post_attention_layernorm"] = xn = norm(x, p["post_attention_layernorm"]["weight"], eps)
    t["mlp.gate_proj"] = gate = project(xn, m["gate_proj"], "out")  # [b, s, F]
    t["mlp.up_proj"] = up = project(xn, m["up_proj"], "out")  # [b, s, F]
    t["mlp.act_mul"] = hidden = kernels.act_mul(gate, up) if kernels else activation(config.hidden_act)(gate) * up
    t["mlp.down_proj"] = down = project(hidden, m["down_proj"], "in")  # [b, s, D]
    t["output"] = x = x + down
    if trace is not None:
        trace.update({f"layers.{layer}.{name}": value for name, value in t.items()})
    return x, t["self_attn.probs"]
