r"""The training losses transformers computes when labels are given: next-token and classification.

All in float32 (float64 for float64 logits): $-\log \mathrm{softmax}$ is taken after subtracting the row maximum, so it never
overflows, whatever dtype the logits were computed in.
"""
from __future__ import annotations

import numpy as np

from .backend import xp_of
from .llama import compute_dtype

F32 = np.float32


def cross_entropy(logits, targets, ignore_index: int = -100):
    r"""Mean of $-\log \mathrm{softmax}(z_n)_{y_n}$ over rows whose target is not `ignore_index` (float32 or 64).

    logits [n, C], targets [n] -> scalar. NaN when every target is ignored, as in torch.
    """
    xp = xp_of(logits)
    keep = targets != ignore_index
    z, y = logits[keep].astype(compute_dtype(logits.dtype)), targets[keep]
    if y.shape[0] == 0:
        return xp.asarray(z.dtype.type("nan"))
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))
    return -logp[xp.arange(y.shape[0]), y].mean()


def causal_lm_loss(logits, labels, ignore_index: int = -100):
    """Next-token loss: position i predicts labels[i+1]; labels equal to -100 are skipped."""
    return cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index)


def classification_loss(pooled, labels, config):
    """transformers' rule: regression for one label, cross-entropy for integer labels, else multi-label BCE."""
    xp = xp_of(pooled)
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
