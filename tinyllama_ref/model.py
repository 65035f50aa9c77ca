r"""The LLaMA decoder: the forward pass as a composition of the layers in `layers.py`.

    tokens -> embed (-> LayerNorm, Open-Llama's stable embedding)
           -> N x [ x += Attention(RMSNorm(x));  x += SwiGLU(RMSNorm(x)) ]
           -> RMSNorm -> LM head (logits over the vocabulary) or score head (classification)

`forward(params, config, input_ids, ...)` is a pure function of its arguments except for the KV
cache, which it writes in place (as transformers' cache does) so that decoding never copies the past.
`Model` only bundles params and config and converts inputs, so `model(input_ids)` reads like HF.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import backend as B
from .config import LlamaConfig
from .layers import (activation, attention_mask_bias, embed, layer_norm, linear, linear_tp, merge_heads,
                     rms_norm, scaled_dot_product_attention, split_heads, swiglu_mlp, tap)
from .rope import apply_rope, rope_cos_sin, rope_inv_freq
from .formats.checkpoint import build_params, read_checkpoint_tensors

F32 = np.float32


class InputError(ValueError):
    """Inputs the model cannot run on (ids out of range, wrong shapes, a foreign cache)."""


# -- the KV cache ----------------------------------------------------------------------------

@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated and written in place.

    keys[l], values[l]: [batch, kv_heads, capacity, head_dim]; slots [0, length) are filled.
    Capacity grows by doubling when a step needs more, so decoding is amortised O(1) copies.
    """

    keys: list
    values: list
    length: int = 0
    signature: tuple = ()  # (layers, kv_heads, head_dim): a cache from another model is refused

    @classmethod
    def allocate(cls, config: LlamaConfig, batch: int, capacity: int, dtype, xp=np) -> "KVCache":
        shape = (batch, config.num_key_value_heads, capacity, config.head_dim)
        n = config.num_hidden_layers
        return cls(keys=[xp.zeros(shape, dtype=dtype) for _ in range(n)],
                   values=[xp.zeros(shape, dtype=dtype) for _ in range(n)],
                   signature=cache_signature(config))

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    def get_seq_length(self) -> int:
        return self.length


def cache_signature(config: LlamaConfig) -> tuple:
    return (config.num_hidden_layers, config.num_key_value_heads, config.head_dim)


def _grow(cache: KVCache, needed: int) -> None:
    """Reallocate every layer's buffers to at least `needed` slots (doubling), keeping what is filled."""
    new_cap = max(needed, 2 * cache.capacity)
    xp = B.xp_of(cache.keys[0])
    for store in (cache.keys, cache.values):
        for i, old in enumerate(store):
            b, g, _, d = old.shape
            new = xp.zeros((b, g, new_cap, d), dtype=old.dtype)
            new[:, :, :cache.length] = old[:, :, :cache.length]
            store[i] = new


def cache_update(cache: KVCache, layer: int, k, v, start: int):
    """Write this step's keys/values [b, g, s, d] at slots [start, start+s); return all filled slots."""
    end = start + k.shape[2]
    cache.keys[layer][:, :, start:end] = k
    cache.values[layer][:, :, start:end] = v
    return cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]


# -- outputs ---------------------------------------------------------------------------------

@dataclass
class ModelOutput:
    """What a forward pass returns (field names as in transformers' CausalLMOutputWithPast)."""

    logits: Any = None
    loss: Any = None
    past_key_values: KVCache | None = None
    hidden_states: tuple | None = None  # embedding output, then each layer's (the last after the final norm)
    attentions: tuple | None = None  # per layer: [batch, heads, query, key] probabilities
    extras: dict = field(default_factory=dict)


# -- the blocks ------------------------------------------------------------------------------

def self_attention(p: dict, x, cos, sin, mask_bias, config: LlamaConfig, cache: KVCache | None,
                   layer: int, past_len: int, trace: dict | None = None, prefix: str = "self_attn."):
    """Multi-head / grouped-query self-attention with RoPE: [b, s, D] -> [b, s, D] (and the probabilities)."""
    h, g, d, tp = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.pretraining_tp
    q = tap(trace, prefix + "q", split_heads(linear_tp(x, p["q_proj"], tp, "out"), h, d))  # [b, h, s, d]
    k = tap(trace, prefix + "k", split_heads(linear_tp(x, p["k_proj"], tp, "out"), g, d))  # [b, g, s, d]
    v = tap(trace, prefix + "v", split_heads(linear_tp(x, p["v_proj"], tp, "out"), g, d))  # [b, g, s, d]
    q = tap(trace, prefix + "q_rope", apply_rope(q, cos, sin))
    k = tap(trace, prefix + "k_rope", apply_rope(k, cos, sin))
    if cache is not None:
        k, v = cache_update(cache, layer, k, v, past_len)  # [b, g, t, d], t = past_len + s
    out, probs = scaled_dot_product_attention(q, k, v, mask_bias, 1.0 / math.sqrt(d))  # GQA: k, v shared
    tap(trace, prefix + "probs", probs)
    out = tap(trace, prefix + "context", merge_heads(out))  # [b, s, h*d]
    return tap(trace, prefix + "o_proj", linear_tp(out, p["o_proj"], tp, "in")), probs


def decoder_layer(p: dict, x, cos, sin, mask_bias, config: LlamaConfig, cache, layer: int, past_len: int,
                  trace: dict | None = None):
    """Pre-norm residual block: x + Attn(RMSNorm(x)), then + MLP(RMSNorm(x))."""
    eps, pre = config.rms_norm_eps, f"layers.{layer}."
    h = tap(trace, pre + "input_layernorm", rms_norm(x, p["input_layernorm"]["weight"], eps))
    attn_out, probs = self_attention(p["self_attn"], h, cos, sin, mask_bias, config, cache, layer, past_len,
                                     trace, pre + "self_attn.")
    x = tap(trace, pre + "attn_residual", x + attn_out)
    h = tap(trace, pre + "post_attention_layernorm", rms_norm(x, p["post_attention_layernorm"]["weight"], eps))
    x = x + swiglu_mlp(p["mlp"], h, activation(config.hidden_act), config.pretraining_tp, trace, pre + "mlp.")
    return tap(trace, pre + "output", x), probs


def embed_tokens(params: dict, config: LlamaConfig, input_ids):
    """Token embedding, followed by LayerNorm when Open-Llama's stable embedding is on."""
    m = params["model"]
    x = embed(m["embed_tokens"]["weight"], input_ids)  # [b, s, D]
    if config.is_open_llama and config.use_stable_embedding:
        x = layer_norm(x, m["embed_layer_norm"]["weight"], m["embed_layer_norm"]["bias"])
    return x


def cross_entropy(logits, targets, ignore_index: int = -100):
    r"""Mean of $-\log \mathrm{softmax}(z_n)_{y_n}$ over rows whose target is not `ignore_index` (float32).

    logits [n, C], targets [n] -> scalar. NaN when every target is ignored, as in torch.
    """
    xp = B.xp_of(logits)
    keep = targets != ignore_index
    z, y = logits[keep].astype(F32), targets[keep]
    if y.shape[0] == 0:
        return xp.asarray(F32("nan"))
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))
    return -logp[xp.arange(y.shape[0]), y].mean()


def causal_lm_loss(logits, labels, ignore_index: int = -100):
    """Next-token loss: position i predicts labels[i+1]; labels equal to -100 are skipped."""
    return cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index)


def classification_loss(pooled, labels, config: LlamaConfig):
    """transformers' rule: regression for one label, cross-entropy for integer labels, else multi-label BCE."""
    xp = B.xp_of(pooled)
    z = pooled.astype(F32)
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype.kind in "iu":
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        return ((z.squeeze() - labels.astype(F32).squeeze()) ** 2).mean()
    if problem == "single_label_classification":
        return cross_entropy(z.reshape(-1, config.num_labels), labels.reshape(-1))
    y = labels.astype(F32)  # multi-label: mean binary cross-entropy with logits
    return (xp.maximum(z, 0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))).mean()


# -- the forward pass ------------------------------------------------------------------------

def check_inputs(config: LlamaConfig, input_ids, attention_mask, position_ids, cache, xp):
    """Validate ids, mask, positions and cache; return them as backend arrays with defaults filled in."""
    if input_ids.ndim != 2:
        raise InputError(f"input_ids must be [batch, seq] (or a single [seq] sequence); got shape "
                         f"{tuple(input_ids.shape)}")
    if input_ids.dtype.kind not in "iu":
        raise InputError(f"input_ids must be integers, got dtype {input_ids.dtype}")
    b, s = input_ids.shape
    if s == 0:
        raise InputError("input_ids is empty: give at least one token")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= config.vocab_size:
        bad = lo if lo < 0 else hi
        where = tuple(int(i) for i in xp.argwhere(input_ids == bad)[0])
        raise InputError(f"token id {bad} at position {where} is outside the vocabulary [0, {config.vocab_size})")
    past = 0
    if cache is not None:
        if not isinstance(cache, KVCache):
            raise InputError(f"past_key_values must be a KVCache returned by this model, got {type(cache).__name__}")
        if cache.signature != cache_signature(config):
            raise InputError(f"past_key_values comes from another model: cache (layers, kv_heads, head_dim) = "
                             f"{cache.signature}, this model {cache_signature(config)}")
        if cache.batch_size != b:
            raise InputError(f"past_key_values holds batch {cache.batch_size}, input_ids has batch {b}")
        past = cache.length
    if attention_mask is None:
        attention_mask = xp.ones((b, past + s), dtype=np.int64)
    else:
        attention_mask = xp.asarray(attention_mask)
        if attention_mask.shape != (b, past + s):
            raise InputError(f"attention_mask must have shape [batch, past + seq] = {(b, past + s)}, "
                             f"got {tuple(attention_mask.shape)}")
    if position_ids is None:
        position_ids = xp.broadcast_to(xp.arange(past, past + s, dtype=np.int64)[None], (b, s))
    else:
        position_ids = xp.asarray(position_ids)
        if position_ids.ndim == 1:
            position_ids = position_ids[None]
        if position_ids.shape not in ((b, s), (1, s)) or position_ids.dtype.kind not in "iu":
            raise InputError(f"position_ids must be integers of shape [batch, seq] = {(b, s)} (or [1, seq]), "
                             f"got {tuple(position_ids.shape)} {position_ids.dtype}")
        position_ids = xp.broadcast_to(position_ids, (b, s))
    return attention_mask, position_ids, past


def forward(params: dict, config: LlamaConfig, input_ids, attention_mask=None, position_ids=None,
            past_key_values: KVCache | None = None, use_cache: bool = False, output_hidden_states: bool = False,
            output_attentions: bool = False, labels=None, logits_to_keep: int | Sequence[int] = 0,
            trace: dict | None = None) -> ModelOutput:
    """Run the model on a batch of token ids [batch, seq]; see `ModelOutput` for what comes back.

    `trace`, if a dict, receives every intermediate under the stable names of `parity.dump`.
    """
    xp = B.xp_of(params["model"]["embed_tokens"]["weight"])
    cache = past_key_values
    attention_mask, position_ids, past = check_inputs(config, input_ids, attention_mask, position_ids, cache, xp)
    b, s = input_ids.shape
    tap(trace, "input_ids", input_ids)
    x = tap(trace, "embed_tokens", embed_tokens(params, config, input_ids))  # [b, s, D]
    if use_cache and cache is None:
        cache = KVCache.allocate(config, b, max(s, 16), x.dtype, xp)
    if cache is not None and past + s > cache.capacity:
        _grow(cache, past + s)

    # Rotation angles for these positions; dynamic/longrope pick frequencies from the furthest position.
    inv_freq, attention_factor = rope_inv_freq(config, seq_len=int(position_ids.max()) + 1)
    cos, sin = rope_cos_sin(inv_freq, position_ids, attention_factor)  # [b, s, d]
    mask_bias = attention_mask_bias(attention_mask, s, past + s, past)  # [b, 1, s, t]

    hidden_states, attentions = [x], []
    for i, layer_params in enumerate(params["model"]["layers"]):
        x, probs = decoder_layer(layer_params, x, cos, sin, mask_bias, config, cache, i, past, trace)
        hidden_states.append(x)
        if output_attentions:
            attentions.append(probs)
    x = tap(trace, "norm", rms_norm(x, params["model"]["norm"]["weight"], config.rms_norm_eps))
    hidden_states[-1] = x  # as transformers: the last hidden state is the normed one
    if cache is not None:
        cache.length = past + s

    out = ModelOutput(past_key_values=cache if (use_cache or past_key_values is not None) else None,
                      hidden_states=tuple(hidden_states) if output_hidden_states else None,
                      attentions=tuple(attentions) if output_attentions else None)
    if config.head == "sequence_classification":
        logits = linear(x, params["score"])  # [b, s, num_labels]
        last = _last_non_pad(input_ids, config, xp)
        out.logits = logits[xp.arange(b), last]  # [b, num_labels]
        if labels is not None:
            out.loss = classification_loss(out.logits, xp.asarray(labels), config)
        return out
    if config.head == "base":
        out.logits = None
        out.extras["last_hidden_state"] = x
        return out
    kept = _keep_positions(x, logits_to_keep)
    out.logits = tap(trace, "logits", kept @ params["lm_head"]["weight"].T)  # [b, s_kept, V]
    if labels is not None:
        labels = xp.asarray(labels)
        if labels.shape != (b, s):
            raise InputError(f"labels must have the shape of input_ids {(b, s)}, got {tuple(labels.shape)}")
        if kept.shape[1] != s:
            raise InputError("labels need logits for every position: use logits_to_keep=0 with labels")
        out.loss = causal_lm_loss(out.logits, labels)
    return out


def _keep_positions(x, logits_to_keep):
    """The positions to compute logits for: all (0), the last k (int k), or the given indices."""
    if isinstance(logits_to_keep, (int, np.integer)):
        return x if logits_to_keep == 0 else x[:, -int(logits_to_keep):]
    xp = B.xp_of(x)
    return x[:, xp.asarray(logits_to_keep)]


def _last_non_pad(input_ids, config: LlamaConfig, xp):
    """Index of the last token that is not padding, per row (transformers' rule for classification)."""
    b, s = input_ids.shape
    if config.pad_token_id is None:
        if b != 1:
            raise InputError("sequence classification of a batch needs a pad_token_id in the config")
        return xp.asarray([s - 1])
    non_pad = (input_ids != config.pad_token_id).astype(np.int64)
    return (xp.arange(s) * non_pad).argmax(axis=-1)


# -- the user-facing model -------------------------------------------------------------------

@dataclass
class Model:
    """A loaded model: `params` (nested dict of arrays, HF names) and `config`. Call it like HF's."""

    params: dict
    config: LlamaConfig
    backend: str = "numpy"
    dtype: str = "float32"
    source: str = ""
    generation_config: dict = field(default_factory=dict)

    @property
    def xp(self):
        return B.get_module(self.backend) if self.backend != "numpy" else np

    def as_input(self, ids, name: str = "input_ids"):
        """Python lists, NumPy or CuPy arrays -> a [batch, seq] integer array of this model's backend."""
        xp = self.xp
        if B.is_cupy_array(ids) and xp is np:
            ids = B.to_numpy(ids)
        if not hasattr(ids, "ndim"):
            try:
                ids = np.asarray(ids)
            except ValueError as e:  # ragged nested lists
                raise InputError(f"{name} must be a rectangular list of token ids: {e}") from None
        ids = xp.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.size and ids.dtype.kind not in "iu":
            raise InputError(f"{name} must be integers, got dtype {ids.dtype}")
        return ids

    def __call__(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                 use_cache: bool = False, output_hidden_states: bool = False, output_attentions: bool = False,
                 labels=None, logits_to_keep: int | Sequence[int] = 0) -> ModelOutput:
        ids = self.as_input(input_ids)
        mask = None if attention_mask is None else self.as_input(attention_mask, "attention_mask")
        pos = None if position_ids is None else self.as_input(position_ids, "position_ids")
        if labels is not None and self.config.head == "causal_lm":
            labels = self.as_input(labels, "labels")
        elif labels is not None:
            labels = self.xp.asarray(labels)
        return forward(self.params, self.config, ids, mask, pos, past_key_values, use_cache,
                       output_hidden_states, output_attentions, labels, logits_to_keep)

    def num_parameters(self) -> int:
        from .formats.checkpoint import flatten

        seen, total = set(), 0
        for arr in flatten(self.params).values():
            if id(arr) not in seen:  # a tied head is counted once
                seen.add(id(arr))
                total += int(arr.size)
        return total


def build_model(config: LlamaConfig, tensors: Mapping[str, np.ndarray], backend: str | None = None,
                dtype: str = "float32", source: str = "checkpoint", progress=None) -> Model:
    """A Model from a config and HF-named tensors (from safetensors, GGUF, or built in memory)."""
    name = B.resolve_backend(backend)
    xp = B.get_module(name)
    params = build_params(tensors, config, dtype, xp, source, progress)
    return Model(params=params, config=config, backend=name, dtype=dtype, source=source)


def load(path: str | Path, backend: str | None = None, dtype: str = "float32", progress: bool = False) -> Model:
    """Load a Hugging Face checkpoint directory (config.json + safetensors) or a GGUF file.

    backend: "numpy" or "cupy" (default: $TINYLLAMA_BACKEND, else numpy). dtype: the compute dtype.
    """
    path = Path(path).expanduser()
    bar = _progress_bar if progress else None
    if path.suffix == ".gguf":
        from .formats.gguf import read_gguf

        config_dict, tensors, _ = read_gguf(path)
        config = LlamaConfig.from_dict(config_dict, source=str(path))
        model = build_model(config, tensors, backend, dtype, str(path), bar)
        model.generation_config = {k: config_dict[k] for k in ("bos_token_id", "eos_token_id")
                                   if config_dict.get(k) is not None}
        return model
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a checkpoint directory nor a .gguf file")
    config = LlamaConfig.from_json(path / "config.json")
    tensors = read_checkpoint_tensors(path)
    model = build_model(config, tensors, backend, dtype, str(path), bar)
    gen = path / "generation_config.json"
    if gen.is_file():
        try:
            model.generation_config = json.loads(gen.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{gen}: not valid JSON ({e})") from None
    return model


def _progress_bar(items, total: int):
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc="loading tensors", unit="tensor", leave=False)
