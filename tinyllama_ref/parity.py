"""The parity kit: dump every intermediate of a forward pass, and compare two dumps tensor by tensor.

Stable names, in forward order (b = batch, s = tokens, t = cached + new tokens, h/g = query/kv
heads, d = head_dim):

    input_ids                               [b, s]
    attention_mask / position_ids           [b, t] / [b, s]  only when given to `trace_forward`
    embed_tokens                            [b, s, D]   (after Open-Llama's embedding LayerNorm, if any)
    layers.N.input_layernorm                [b, s, D]
    layers.N.self_attn.q / k / v            [b, h|g, s, d]   projections split into heads, before RoPE
    layers.N.self_attn.q_rope / k_rope      [b, h|g, s, d]   after RoPE (rotate-half layout)
    layers.N.self_attn.probs                [b, h, s, t]     attention probabilities, over every key
    layers.N.self_attn.context              [b, s, h*d]      probabilities @ values, heads merged
    layers.N.self_attn.o_proj               [b, s, D]
    layers.N.attn_residual                  [b, s, D]        residual stream after attention
    layers.N.post_attention_layernorm       [b, s, D]
    layers.N.mlp.gate_proj / up_proj        [b, s, F]
    layers.N.mlp.act_mul                    [b, s, F]        act(gate) * up
    layers.N.mlp.down_proj                  [b, s, D]
    layers.N.output                         [b, s, D]        residual stream after the layer
    norm                                    [b, s, D]
    logits                                  [b, s, V]

`input_ids` and `logits` are recorded by `model.forward`; the rest by `llama.py` itself, which hands
each intermediate to the observer of its `LayerOps` (`model.recorder` here; `llama.ignore`, which
keeps nothing, otherwise). It is the same layer and the same functions, traced or not: the logits are
bit-identical (tests/test_one_layer.py).

Another implementation that writes the same names (safetensors or .npz) can be checked with
`tinyllama-ref compare ours.safetensors theirs.safetensors`, which names the first tensor that diverges.
"""
from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from .atomic import replacing
from .backend import to_numpy
from .errors import CheckpointError
from .model import forward
from .formats.safetensors import read_safetensors, read_safetensors_header, write_safetensors

LAYER_ORDER = ["input_layernorm", "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.q_rope",
               "self_attn.k_rope", "self_attn.probs", "self_attn.context", "self_attn.o_proj", "attn_residual",
               "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.act_mul", "mlp.down_proj", "output"]
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
INPUT_NAMES = ("input_ids", "attention_mask", "position_ids")  # integers; the rest of a dump is float32
HEAD_AXIS_NAMES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.q_rope", "self_attn.k_rope",
                   "self_attn.probs")  # [b, heads, s, ...]: the token axis is 2, elsewhere it is 1


def forward_order_key(name: str) -> tuple:
    """Sort key that puts dump names in the order the forward pass computes them.

    >>> sorted(["logits", "layers.1.output", "layers.0.mlp.up_proj", "embed_tokens"], key=forward_order_key)
    ['embed_tokens', 'layers.0.mlp.up_proj', 'layers.1.output', 'logits']
    """
    head = {"input_ids": 0, "attention_mask": 0, "position_ids": 0, "embed_tokens": 1}
    if name in head:
        return (head[name], 0, 0, name)
    m = _LAYER_RE.match(name)
    if m:
        sub = m.group(2)
        return (2, int(m.group(1)), LAYER_ORDER.index(sub) if sub in LAYER_ORDER else len(LAYER_ORDER), name)
    tail = {"norm": 3, "logits": 4}
    return (tail.get(name, 5), 0, 0, name)


def trace_forward(model, input_ids, attention_mask=None, position_ids=None,
                  past_key_values=None) -> dict[str, np.ndarray]:
    """Every intermediate of one forward pass as float32 NumPy arrays, in forward order.

    `attention_mask` and `position_ids`, when given, are recorded after `input_ids` (a padded batch's
    dump then says which positions are padding). A `past_key_values` cache (a `KVCache`, empty for a
    prefill) is extended in place: a decode step's dump holds its new tokens only, its `probs` every key.
    """
    ids = model.as_input(input_ids)
    given = {k: model.as_input(v, k) for k, v in (("attention_mask", attention_mask), ("position_ids", position_ids))
             if v is not None}
    trace: dict = {}
    forward(model.params, model.config, ids, given.get("attention_mask"), given.get("position_ids"),
            past_key_values, trace=trace, rope=model.rope, ops=model.ops)
    trace = {"input_ids": trace.pop("input_ids"), **given, **trace}
    in_order = sorted(trace, key=lambda k: forward_order_key(k)[:3])  # stable: the inputs stay as given
    return {k: to_numpy(trace[k]).astype(np.int64 if k in INPUT_NAMES else np.float32) for k in in_order}


def save_tensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: dict | None = None) -> Path:
    """Write a dump as .safetensors (with the forward order in its metadata) or .npz."""
    path = Path(path)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    if path.suffix == ".npz":
        with replacing(path) as f:  # a temporary file renamed into place, as for safetensors
            np.savez(f, **tensors)
    else:
        meta = {"order": json.dumps(list(tensors)), **(metadata or {})}
        write_safetensors(path, tensors, meta)
    return path


def load_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read a dump (.safetensors or .npz) into a dict in forward order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dump not found: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path) as f:
                tensors = {k: f[k] for k in f.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # object arrays: pickle is refused
            raise CheckpointError(f"{path}: not a readable .npz of numeric arrays ({e})") from None
        for name, arr in tensors.items():  # np.asarray(..., float64) drops an imaginary part and parses strings
            if arr.dtype.kind not in "biuf":
                raise CheckpointError(f"{path}: tensor {name!r} is {arr.dtype}: a dump holds real numbers only")
    else:
        tensors = read_safetensors(path)
        meta = read_safetensors_header(path)[0].get("__metadata__")
        order = meta.get("order") if isinstance(meta, dict) else None
        try:
            known = [k for k in json.loads(order) if isinstance(k, str)] if isinstance(order, str) else None
        except (ValueError, TypeError, RecursionError):
            known = None  # an order we cannot read: fall back to the forward order of the names
        if known:
            return {k: tensors[k] for k in known if k in tensors} | \
                   {k: tensors[k] for k in sorted(set(tensors) - set(known), key=forward_order_key)}
    return {k: tensors[k] for k in sorted(tensors, key=forward_order_key)}


def dump(model, tokenizer, prompt: str, out: str | Path) -> tuple[Path, list[str]]:
    """Encode `prompt`, run the model, and save every intermediate to `out`."""
    ids = tokenizer.encode(prompt)
    tensors = trace_forward(model, [ids])
    meta = {"prompt": prompt, "model": str(model.source), "producer": "tinyllama_ref"}
    return save_tensors(out, tensors, meta), list(tensors)


def compare(ours: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray], rtol: float = 1e-3,
            atol: float = 1e-4) -> list[dict]:
    """One row per tensor name (in our order): shapes, max abs and rel error, and whether it diverges.

    A tensor diverges when some element has |a - b| > atol + rtol * |b| (numpy.allclose's rule),
    or the shapes differ, or one side lacks it. rtol and atol must be finite and >= 0.
    """
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not 0 <= v < np.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")  # nan fails every test, inf none
    rows = []
    for name in list(ours) + [k for k in theirs if k not in ours]:
        a, b = ours.get(name), theirs.get(name)
        row = {"name": name, "shape": tuple(a.shape if a is not None else b.shape), "max_abs": float("nan"),
               "max_rel": float("nan"), "status": "ok"}
        if a is None or b is None:
            row["status"] = "only in ours" if b is None else "only in theirs"
        elif a.shape != b.shape:
            row["status"] = f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        else:
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            diff = np.abs(a64 - b64)
            row["max_abs"] = float(diff.max()) if diff.size else 0.0
            row["max_rel"] = float((diff / np.maximum(np.abs(b64), 1e-12)).max()) if diff.size else 0.0
            if diff.size and not np.all(diff <= atol + rtol * np.abs(b64)):
                row["status"] = "DIVERGES"
        rows.append(row)
    return rows


def first_divergence(rows: list[dict]) -> dict | None:
    """The first row (in forward order) whose tensors differ beyond tolerance, or None."""
    return next((r for r in rows if r["status"] not in ("ok", "only in ours", "only in theirs")), None)


def drop_padding(tensors: Mapping[str, np.ndarray], attention_mask) -> dict[str, np.ndarray]:
    """A copy of a dump with every value at a padding position (attention_mask == 0) set to 0.

    What a model computes for a pad token is not defined (a pad query at the left of a batch sees no
    key at all), so it is not compared. The token axis is 2 in the per-head tensors [b, heads, s, ...],
    1 elsewhere; after a cache the mask covers past + s positions and the dump its last s. A tensor
    whose batch or length does not fit the mask is left as it is (compare then reports its shape).
    """
    mask = np.asarray(attention_mask) != 0  # [b, t]
    out = {}
    for name, arr in tensors.items():
        axis = 2 if name.split(".", 2)[-1] in HEAD_AXIS_NAMES else 1
        if name == "attention_mask" or arr.ndim <= axis or arr.shape[0] != mask.shape[0] \
                or arr.shape[axis] > mask.shape[1]:
            out[name] = arr
            continue
        keep = mask[:, mask.shape[1] - arr.shape[axis]:]  # [b, s]: the dump's own tokens
        shape = (arr.shape[0],) + (1,) * (axis - 1) + (arr.shape[axis],) + (1,) * (arr.ndim - axis - 1)
        out[name] = np.where(keep.reshape(shape), arr, 0).astype(arr.dtype)
    return out


def compare_dumps(ours: str | Path, theirs: str | Path, rtol: float = 1e-3, atol: float = 1e-4) -> list[dict]:
    """`compare` of two dump files. When `ours` holds an `attention_mask`, padding positions are not
    compared (`drop_padding`)."""
    mine, other = load_tensors(ours), load_tensors(theirs)
    if "attention_mask" in mine:
        mine, other = drop_padding(mine, mine["attention_mask"]), drop_padding(other, mine["attention_mask"])
    return compare(mine, other, rtol, atol)


def compare_files(ours: str | Path, theirs: str | Path, rtol: float = 1e-3, atol: float = 1e-4,
                  out=None) -> int:
    """Print the comparison table of two dump files (`compare_dumps`); return 0 when nothing diverges,
    1 otherwise (the CLI's exit code)."""
    return print_comparison(compare_dumps(ours, theirs, rtol, atol), rtol, atol, f"{ours} and {theirs}", out)


def print_comparison(rows: list[dict], rtol: float, atol: float, what: str = "the two dumps", out=None,
                     table: bool = True) -> int:
    """Print `compare`'s rows as a table (unless `table` is False), then the verdict: the first divergence,
    or that all shared tensors agree. Returns 0 when they agree, else 1."""
    out = out or sys.stdout
    width = max([len(r["name"]) for r in rows] + [6])
    if table:
        print(f"{'tensor':{width}s}  {'shape':>18s}  {'max|Δ|':>10s}  {'max rel':>10s}  status", file=out)
    for r in rows if table else []:
        print(f"{r['name']:{width}s}  {str(r['shape']):>18s}  {r['max_abs']:10.3g}  {r['max_rel']:10.3g}  "
              f"{r['status']}", file=out)
    bad = first_divergence(rows)
    if not any(r["status"] not in ("only in ours", "only in theirs") for r in rows):
        print(f"nothing compared: {what} have no tensor names in common", file=out)
        return 1
    if bad is None:
        common = sum(r["status"] == "ok" for r in rows)
        print(f"all {common} shared tensors agree (rtol={rtol}, atol={atol})", file=out)
        return 0
    print(f"first divergence: {bad['name']} (max|Δ| {bad['max_abs']:.3g}, max rel {bad['max_rel']:.3g}; "
          f"rtol={rtol}, atol={atol})", file=out)
    return 1
