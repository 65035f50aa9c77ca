r"""Open-Llama (OpenLM Research 2023): LLaMA plus a "stable embedding" and one matrix for both ends.

Two differences from `llama.py`, both chosen from the config when the model is built:

- `use_stable_embedding`: a LayerNorm right after the token embedding (as in BLOOM and
  bitsandbytes' StableEmbedding), meant to steady the early steps of training: `stable_embedding`.
- `shared_input_output_embedding`: the LM head reuses the embedding matrix, $W_\text{lm} = E$.
  Nothing to compute: the loader points `lm_head.weight` at the same array
  (`formats.checkpoint.build_params`), exactly as LLaMA's `tie_word_embeddings` does.

transformers removed Open-Llama in 5.0; its golden files come from 4.57 (tools/make_golden.py).
"""
from __future__ import annotations

import numpy as np

from .backend import xp_of
from .llama import embed

F32 = np.float32


def layer_norm(x, weight, bias, eps: float = 1e-5):
    r"""LayerNorm (Ba et al. 2016): $y = w \odot (x - \mu)/\sqrt{\sigma^2 + \epsilon} + b$, in float32."""
    xp = xp_of(x)
    x32 = x.astype(F32)
    mu = xp.mean(x32, axis=-1, keepdims=True)
    var = xp.mean((x32 - mu) ** 2, axis=-1, keepdims=True)
    return ((x32 - mu) / xp.sqrt(var + F32(eps)) * weight + bias).astype(x.dtype)


def stable_embedding(p: dict, input_ids, lookup=embed):
    """`llama.embed`, then the `embed_layer_norm` LayerNorm (weight and bias): [b, s] -> [b, s, D].
    The `embed` of `llama.LayerOps` when the config sets `use_stable_embedding`; across ranks the
    `lookup` is `tensor_parallel.embed_parallel`, whole vectors before the norm."""
    norm = p["embed_layer_norm"]
    return layer_norm(lookup(p, input_ids), norm["weight"], norm["bias"])
