r"""Comparing gradients, by HF tensor name: against a reference, and against finite differences (no torch).

The error of one parameter is $\max|\Delta| / \max|\mathrm{ref}|$ over the whole tensor, the measure of
issue 21: relative to the tensor's largest entry, so that entries near zero do not blow it up.
A failed comparison names the tensors, in forward order, and the worst one.
"""
from __future__ import annotations

import re

import numpy as np


def parameter_kind(name: str) -> str:
    """The table row of a tensor: "model.layers.1.self_attn.q_proj.weight" -> "q_proj", its bias -> "q_proj.bias",
    "model.layers.0.input_layernorm.weight" -> "input_layernorm", "model.norm.weight" -> "norm"."""
    kind = re.sub(r"^(model\.)?(layers\.\d+\.)?(self_attn\.|mlp\.)?", "", name)
    return kind.removesuffix(".weight")


def relative_error(got, want) -> float:
    """max |got - want| / max |want| (the absolute error where want is all zeros)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = float(np.abs(want).max(initial=0.0))
    diff = float(np.abs(got - want).max(initial=0.0))
    return diff / scale if scale > 0 else diff


def assert_grads_close(got: dict, want: dict, tol: float, what: str = "") -> dict[str, float]:
    """Check every gradient of `got` against `want` ({HF name: array}), to `tol` relative; return the errors.

    The failure message names every tensor off by more than `tol`, first to last in `want`'s order (the
    forward's), and the worst one, e.g. "model.layers.0.input_layernorm.weight: 1.0e-03 > 1e-08".
    """
    if set(got) != set(want):
        raise AssertionError(f"{what}gradient names differ: only ours {sorted(set(got) - set(want))}, "
                             f"only the reference's {sorted(set(want) - set(got))}")
    for name in want:
        if np.shape(got[name]) != np.shape(want[name]):
            raise AssertionError(f"{what}gradient of {name} has shape {np.shape(got[name])}, "
                                 f"the reference's {np.shape(want[name])}")
    errors = {name: relative_error(got[name], want[name]) for name in want}
    bad = [name for name, e in errors.items() if not e <= tol]  # `not <=`: NaN fails too
    if bad:
        worst = max(bad, key=lambda n: (np.nan_to_num(errors[n], nan=np.inf)))
        listed = "; ".join(f"{n}: {errors[n]:.1e}" for n in bad)
        raise AssertionError(f"{what}gradient of {bad[0]} is off: max|Δ|/max|ref| = {errors[bad[0]]:.2e} > {tol:g} "
                             f"(worst: {worst}, {errors[worst]:.2e}); every tensor off: {listed}")
    return errors


def worst_per_kind(errors: dict[str, float]) -> dict[str, float]:
    """{tensor name: error} -> {parameter kind: the worst error of its tensors}."""
    out: dict[str, float] = {}
    for name, e in errors.items():
        kind = parameter_kind(name)
        out[kind] = max(e, out.get(kind, e))
    return out


def finite_difference_errors(loss, arrays: dict, grads: dict, rng, per_tensor: int = 3,
                             h: float = 1e-5) -> dict[str, float]:
    r"""Central differences $(L(w + h e_i) - L(w - h e_i)) / 2h$ at a few coordinates of every tensor, against `grads`.

    loss(): the loss at the current values of `arrays` ({name: array changed in place: NumPy, or a torch
    tensor's `.data`}). Per tensor: the coordinate of its largest gradient and `per_tensor - 1` random ones;
    an array under two names (a tied head) is checked once. Returns {name: max |fd - grad| / max |grad|}.
    The truncation error is $O(h^2)$ and the rounding error $O(\epsilon L / h)$: about 1e-10 at h = 1e-5.
    """
    errors, seen = {}, set()
    for name, arr in arrays.items():
        if id(arr) in seen:
            continue
        seen.add(id(arr))
        g = np.asarray(grads[name], dtype=np.float64)
        coords = [np.unravel_index(int(np.abs(g).argmax()), g.shape)]
        coords += [tuple(int(rng.integers(0, n)) for n in g.shape) for _ in range(per_tensor - 1)]
        worst = 0.0
        for idx in coords:
            old = float(arr[idx])
            arr[idx] = old + h
            up = loss()
            arr[idx] = old - h
            down = loss()
            arr[idx] = old
            worst = max(worst, abs((up - down) / (2 * h) - g[idx]))
        errors[name] = worst / max(float(np.abs(g).max()), np.finfo(np.float64).tiny)
    return errors


def first_real_label_ignored(labels, attention_mask):
    """Labels with -100 at pads and at each left-padded row's first real token, so that no kept label reads the
    output of a query row whose every key is masked (what finite differences cannot see; torch_grad_reference's
    docstring says why). [b, s] -> [b, s]"""
    labels = np.array(labels)
    mask = np.asarray(attention_mask)
    labels[mask == 0] = -100
    for row in np.flatnonzero((mask[:, 0] == 0) & (mask.max(axis=1) != 0)):
        labels[row, np.argmax(mask[row] != 0)] = -100
    return labels
