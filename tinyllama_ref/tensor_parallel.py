"""`pretraining_tp`: the projections computed in slices, as Meta's tensor-parallel pretraining did.

Llama 2's checkpoints record `pretraining_tp` (1 for 7B and 13B, more for 70B): the number of
devices each projection was split over during pretraining. Slicing changes only the order in which
the sums are rounded, never the mathematics, and transformers 5.x (and 4.57) ignore the setting.
We still honour it when a config asks (`model.layer_ops` hands `column_linear_tp` and `row_linear_tp`
to the one decoder layer of `llama.py`), so that a checkpoint's own recipe can be reproduced;
tests/test_model_properties.py checks it equals the unsliced model.
"""
from __future__ import annotations

from functools import partial

from .backend import xp_of
from .llama import linear


def column_linear_tp(x, p: dict, tp: int):
    """`llama.linear` in `tp` slices of the output features (q/k/v, gate, up), concatenated."""
    w = p["weight"]
    y = xp_of(x).concatenate([x @ wi.T for wi in xp_of(w).split(w, tp, axis=0)], axis=-1)
    return y if p.get("bias") is None else y + p["bias"]


def row_linear_tp(x, p: dict, tp: int):
    """`llama.linear` in `tp` slices of the input features (o_proj, down_proj): partial products, summed."""
    xp = xp_of(x)
    y = sum(xi @ wi.T for xi, wi in zip(xp.split(x, tp, axis=-1), xp.split(p["weight"], tp, axis=1)))
    return y if p.get("bias") is None else y + p["bias"]


def sliced_linears(tp: int) -> dict:
    """The `column_linear` and `row_linear` of `llama.LayerOps` for `pretraining_tp = tp` (plain when tp is 1)."""
    if tp == 1:
        return {"column_linear": linear, "row_linear": linear}
    return {"column_linear": partial(column_linear_tp, tp=tp), "row_linear": partial(row_linear_tp, tp=tp)}
