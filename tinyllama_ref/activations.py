r"""The activation functions a config can name (`hidden_act`); LLaMA uses SiLU, $z\,\sigma(z)$.

The others appear in configs of LLaMA-architecture models trained elsewhere, and transformers runs
them, so we do too: `activation(config.hidden_act)` picks one by name, and `gated(act)` makes the MLP's
gated product $\mathrm{act}(g) \odot u$ that `model.layer_ops` hands to the one layer of `llama.py`
in place of `llama.silu_mul`.
"""
from __future__ import annotations

import math
from functools import partial

from .backend import xp_of
from .llama import silu, silu_mul


def relu(x):
    """max(x, 0)"""
    return x * (x > 0)


def gelu_tanh(x):
    r"""GELU's tanh approximation: $\frac{x}{2}\,(1 + \tanh(\sqrt{2/\pi}\,(x + 0.044715\,x^3)))$."""
    xp = xp_of(x)
    return 0.5 * x * (1 + xp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu(x):
    r"""Exact GELU (Hendrycks & Gimpel 2016): $x\,\Phi(x) = \frac{x}{2}\,(1 + \mathrm{erf}(x/\sqrt{2}))$."""
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


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


ACTIVATIONS = {"silu": silu, "swish": silu, "relu": relu, "gelu": gelu, "gelu_new": gelu_tanh,
               "gelu_pytorch_tanh": gelu_tanh}


def activation(name: str):
    """The activation function a config names (`hidden_act`): `activation("silu") is silu`."""
    return ACTIVATIONS[name]


def act_mul(act, gate, up):
    r"""The gated product of a GLU MLP with another activation: $\mathrm{act}(g) \odot u$."""
    return act(gate) * up


def gated(name: str):
    """The `act_mul` for the activation a config names: `llama.silu_mul` itself for SiLU."""
    return silu_mul if ACTIVATIONS[name] is silu else partial(act_mul, ACTIVATIONS[name])
