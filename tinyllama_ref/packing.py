r"""A load-time layout: the projections that read one input, packed into one matrix and run as one product.

q, k and v all read the same normed hidden state, and so do gate and up. gpt-fast and vLLM store each group as
one matrix of the stacked rows, [out_q + out_k + out_v, in], and run one product where the paper runs three:

$$x\,[W_q; W_k; W_v]^\top = [\,x W_q^\top \mid x W_k^\top \mid x W_v^\top\,]$$

Each output column is the same dot product either way, so nothing changes but the number of calls into BLAS
and their shape: one longer matrix-vector product per group in a decode step, which BLAS spreads over its
threads better than three short ones, and one call instead of three in a prefill.

The parameters keep the checkpoint's names and shapes: after `pack_projections`, each projection's weight is
a view of its rows of the packed matrix. `save_pretrained`, `value_and_grad`'s gradients and anything that
reads `model.params` see what they always saw; an optimiser step that writes into a weight writes into the
packed matrix. `packed_linears` hands back None for weights that are not those views (a weight replaced by
another array, a quantized weight): the layer then runs its `column_linear` one projection after another, as
the book writes it.
"""
from __future__ import annotations

import numpy as np

from .backend import is_cupy_array, xp_of

GROUPS = {"self_attn": ("q_proj", "k_proj", "v_proj"), "mlp": ("gate_proj", "up_proj")}  # one input each


def pack_rows(projections: list[dict]) -> None:
    """Replace the weights [out_i, in] of `projections` by row views of one new [sum out_i, in] matrix, in place.
    Weights that are not plain arrays of one dtype and one input width are left as they are."""
    weights = [p["weight"] for p in projections]
    if not all(getattr(w, "ndim", None) == 2 and hasattr(w, "base") for w in weights):
        return  # quantized weights (`quantize.py`) dequantize per product: nothing to pack
    if len({(w.dtype, w.shape[1], type(w)) for w in weights}) != 1:
        return
    packed = xp_of(*weights).concatenate(weights)  # [sum out_i, in], C-contiguous
    start = 0
    for p, w in zip(projections, weights):
        p["weight"] = packed[start:start + w.shape[0]]  # a view: the rows [start, start + out_i)
        start += w.shape[0]
        release_file_pages(w)


def release_file_pages(w) -> None:
    """Hand back the pages of a weight memory-mapped from its file (float32 safetensors are), now that a copy
    is used: without this the process would hold both, the packed copy and the file's pages it was read from
    (TinyLlama-1.1B: 6.5 GB where its weights are 4.2 GB). The system keeps the pages in its file cache."""
    import mmap

    chain = [w]
    while getattr(chain[-1], "base", None) is not None and not isinstance(chain[-1], mmap.mmap):
        chain.append(chain[-1].base)
    whole = chain[-2] if len(chain) > 1 else None  # the array over the whole map, from its first byte
    if not (isinstance(chain[-1], mmap.mmap) and isinstance(whole, np.memmap) and hasattr(mmap, "MADV_DONTNEED")):
        return
    if whole.mode != "r" or whole.offset != 0:  # read-only only: dropped pages come back from the file unchanged
        return
    offset = _address(w) - _address(whole)
    first, end = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE, (offset + w.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > first:  # whole pages only: a page shared with a neighbouring tensor stays
        chain[-1].madvise(mmap.MADV_DONTNEED, first, end - first)


def pack_projections(params: dict) -> None:
    """Pack every layer's q/k/v and gate/up weights (`GROUPS`) in place."""
    for layer in params["model"]["layers"]:
        for block, names in GROUPS.items():
            if block in layer and all(n in layer[block] for n in names):
                pack_rows([layer[block][n] for n in names])


def _address(a) -> int:
    """Where an array's first element lives (a host or a device pointer)."""
    return a.data.ptr if is_cupy_array(a) else a.__array_interface__["data"][0]


def tiled_base(weights):
    """The [sum out_i, in] matrix whose consecutive row blocks `weights` are, in order, or None."""
    base = getattr(weights[0], "base", None)
    if base is None or getattr(base, "ndim", None) != 2 or any(getattr(w, "base", None) is not base for w in weights):
        return None  # not views of one matrix (weights memory-mapped from one file share a 1-D base)
    if sum(w.shape[0] for w in weights) != base.shape[0] or any(w.strides != base.strides for w in weights):
        return None
    starts = [_address(base) + sum(v.shape[0] for v in weights[:i]) * base.strides[0] for i in range(len(weights))]
    return base if [_address(w) for w in weights] == starts else None


def packed_linears(params: dict):
    """The `column_linears` of `llama.LayerOps` for these params: [x W_i^T + b_i] of a packed group in one product
    (views of it), or None for weights that are not the views `pack_projections` made (the layer then runs them
    one by one). Each group is known by its first weight and checked by identity: a weight replaced since, or
    quantized, is not mistaken for a view. None when nothing is packed."""
    groups = {}
    for layer in params["model"]["layers"]:
        for block, names in GROUPS.items():
            weights = [layer.get(block, {}).get(n, {}).get("weight") for n in names]
            if (base := tiled_base(weights)) is not None:
                groups[id(weights[0])] = (base, weights)  # holding the views keeps their ids theirs
    if not groups:
        return None

    def column_linears(x, *projections):
        base, weights = groups.get(id(projections[0]["weight"]), (None, ()))
        if len(weights) != len(projections) or any(p["weight"] is not w for p, w in zip(projections, weights)):
            return None
        y = x @ base.T  # [..., sum out_i]
        outs, start = [], 0
        for p, w in zip(projections, weights):
            part = y[..., start:start + w.shape[0]]
            outs.append(part if p.get("bias") is None else part + p["bias"])
            start += w.shape[0]
        return outs

    return column_linears
