"""`pretraining_tp`: the projections computed in slices, as Meta's tensor-parallel pretraining did.

Llama 2's checkpoints record `pretraining_tp` (1 for 7B and 13B, more for 70B): the number of
devices each projection was split over during pretraining. Slicing changes only the order in which
the sums are rounded, never the mathematics, and transformers 5.x (and 4.57) ignore the setting.
We still honour it when a config asks (`instrumented.decoder_layer` runs the layer with
`sliced_projection(tp)`), so that a checkpoint's own recipe can be reproduced;
tests/test_model_properties.py checks it equals the unsliced model.
"""
from __future__ import annotations

from .backend import xp_of
from .llama import linear


def linear_tp(x, p: dict, tp: int, split: str):
    """`llama.linear` computed in `tp` slices.

    split="out": each slice makes some output features, concatenated (q/k/v, gate, up).
    split="in": each slice sees some input features, partial products summed (o_proj, down_proj).
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


def sliced_projection(tp: int):
    """A `project(x, p, split)` for `instrumented.decoder_layer` that slices every projection `tp` ways."""
    return lambda x, p, split: linear_tp(x, p, tp, split)
