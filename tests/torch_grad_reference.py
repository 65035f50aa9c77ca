r"""torch autograd's loss and gradients for a Llama checkpoint: the reference `tl.value_and_grad` is checked against.

    loss, grads = torch_value_and_grad(ckpt_dir, input_ids, labels, attention_mask, dtype="float64")
    grads["model.layers.0.self_attn.q_proj.weight"]  # a NumPy array, one per HF tensor name

transformers builds `LlamaForCausalLM` (eager attention) and `loss.backward()` fills the gradients.
In float32 that is plain transformers. In float64 it is not enough: transformers computes four steps
in float32 whatever the weights' dtype, which would limit the reference to ~1e-7, not the 1e-8 the
float64 check asks for:

- RMSNorm (`hidden_states.to(torch.float32)`),
- the RoPE tables (`position_ids.float() * inv_freq.float()`, cos and sin in float32),
- the eager softmax (`softmax(..., dtype=torch.float32)`), where the float64 mask minimum becomes
  -inf, so that a fully masked row (a left-pad query) is -inf - -inf = NaN,
- the loss (`logits.float()` in `ForCausalLMLoss`).

`float64_steps()` patches the first three to run in float64 while it is open (and restores them);
the loss is taken from the float64 logits here: shifted by one, -100 ignored, mean over kept tokens.
The mask keeps float32's minimum as its masked value, as our float64 model does: a fully masked row
becomes uniform over all its keys, exactly as in float32 (the score is absorbed, $s + m = m$). The
inverse frequencies stay the float32 values transformers makes (as ours, `rope_scaling.py`); only
positions × frequencies and the cos/sin onwards are float64.

A trap for finite differences (not for this comparison): in a fully masked row autograd passes the
softmax's Jacobian at the uniform row back to that row's scores, while the computed function does not
depend on them (the mask absorbed them). Both torch and our backward do this, so they agree; a
finite-difference check agrees with neither unless no kept label reads a fully masked row's output
(with left padding: the label of each row's first real token is -100, see `grad_check.first_real_label_ignored`).

torch and transformers are imported inside the functions: importing this module needs neither.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import numpy as np

F32_MIN = float(np.finfo(np.float32).min)  # the masked score, in float32 and float64 alike (as llama.py)
DTYPES = ("float32", "float64")


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return getattr(torch, dtype)


# -- the float64 steps -------------------------------------------------------------------------

def _rms_norm_forward64(self, hidden_states):
    """LlamaRMSNorm.forward without the float32 round trip."""
    import torch

    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rotary_forward64(self, x, position_ids):
    """LlamaRotaryEmbedding.forward with positions × inv_freq, cos and sin in float64 (inv_freq's values as made)."""
    import torch

    freqs = position_ids[..., None].to(torch.float64) * self.inv_freq.to(device=x.device, dtype=torch.float64)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def _eager_attention_forward64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """eager_attention_forward with the softmax in the scores' dtype and float32's minimum as the masked value."""
    import torch
    from transformers.models.llama import modeling_llama as ml

    key_states = ml.repeat_kv(key, module.num_key_value_groups)
    value_states = ml.repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask.clamp(min=F32_MIN)  # float64's minimum -> float32's, as in llama.py
    probs = torch.nn.functional.softmax(scores, dim=-1)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value_states).transpose(1, 2).contiguous(), probs


@contextlib.contextmanager
def float64_steps():
    """While open, transformers' Llama runs RMSNorm, the RoPE tables and the eager softmax in the model's dtype."""
    from unittest import mock

    from transformers.models.llama import modeling_llama as ml

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(ml.LlamaRMSNorm, "forward", _rms_norm_forward64))
        stack.enter_context(mock.patch.object(ml.LlamaRotaryEmbedding, "forward",
                                              ml.dynamic_rope_update(_rotary_forward64)))
        # LlamaAttention.forward looks the default up in the module's globals at every call
        stack.enter_context(mock.patch.object(ml, "eager_attention_forward", _eager_attention_forward64))
        yield


# -- the model, the loss, the gradients ---------------------------------------------------------

def hf_causal_lm(source, dtype: str = "float64", tensors: dict | None = None):
    """transformers' LlamaForCausalLM with eager attention in `dtype`, in eval mode.

    source: a checkpoint directory, or a `transformers.LlamaConfig` whose weights are `tensors`
    ({HF name: array}; a tied head's "lm_head.weight" may be absent). The model is made in float32
    and cast, so RoPE's inverse frequencies hold the float32 values transformers makes.
    """
    import torch
    import transformers

    torch_dtype = _torch_dtype(dtype)
    if tensors is None:
        model = transformers.LlamaForCausalLM.from_pretrained(Path(source), dtype=torch.float32,
                                                              attn_implementation="eager")
    else:
        config = copy.deepcopy(source)
        config._attn_implementation = "eager"
        model = transformers.LlamaForCausalLM(config)
    model = model.to(torch_dtype).eval()
    if tensors is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():  # a tied lm_head appears once, as embed_tokens
                if name not in tensors:
                    raise KeyError(f"tensors: missing {name!r}, which the config needs")
                p.copy_(torch.from_numpy(np.ascontiguousarray(tensors[name])))
    return model


def causal_lm_loss(logits, labels):
    """transformers' causal-LM loss in the logits' dtype: position i predicts labels[i+1], -100 ignored, mean."""
    import torch

    vocab = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1),
                                             ignore_index=-100)


def model_loss(model, input_ids, labels, attention_mask=None):
    """The loss tensor (graph kept): float64 steps and a float64 loss for a float64 model, plain transformers else."""
    import torch

    ids, labels = torch.as_tensor(np.asarray(input_ids)), torch.as_tensor(np.asarray(labels))
    mask = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask))
    if model.dtype == torch.float32:
        return model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    with float64_steps():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return causal_lm_loss(logits, labels)


def named_grads(model) -> dict[str, np.ndarray]:
    """{HF name: gradient}; a tied head's "lm_head.weight" is the embedding's gradient (the same array)."""
    grads = {name: p.grad.detach().numpy().copy() for name, p in model.named_parameters()}
    if model.config.tie_word_embeddings:
        grads["lm_head.weight"] = grads["model.embed_tokens.weight"]
    return grads


def torch_value_and_grad(source, input_ids, labels, attention_mask=None, dtype: str = "float64",
                         tensors: dict | None = None) -> tuple[float, dict[str, np.ndarray]]:
    """(loss, {HF name: gradient}) by torch autograd, for a checkpoint directory or a config + tensors."""
    model = hf_causal_lm(source, dtype, tensors)
    model.zero_grad(set_to_none=True)
    loss = model_loss(model, input_ids, labels, attention_mask)
    loss.backward()
    return float(loss.detach()), named_grads(model)

