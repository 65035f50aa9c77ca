r"""Tensor parallelism: each layer's matrices cut across N ranks, as Meta's reference runs Llama; and `pretraining_tp`.

**Column-parallel, then row-parallel: exactly one all-reduce.** Take the MLP,
$y = W_\text{down}\,(\phi(W_\text{gate}\,x) \odot W_\text{up}\,x)$, and cut its F features into N blocks.
$W_\text{gate}$ and $W_\text{up}$ are cut by output rows (Meta's `ColumnParallelLinear`), $W_\text{down}$
by input columns (`RowParallelLinear`):

$$W_\text{gate} = \begin{pmatrix} G_1 \\ \vdots \\ G_N \end{pmatrix},\quad
  W_\text{up} = \begin{pmatrix} U_1 \\ \vdots \\ U_N \end{pmatrix},\quad
  W_\text{down} = \begin{pmatrix} D_1 & \cdots & D_N \end{pmatrix}.$$

Every rank holds the whole input x (the residual stream is replicated). Rank r computes its block of
features $h_r = \phi(G_r x) \odot U_r x$ from x and its own rows alone: the product $\odot$ and $\phi$
act feature by feature, so nothing of the other blocks is needed, and the column-parallel step
communicates nothing. The row-parallel step is a block product,

$$y = W_\text{down}\,h = \sum_{r=1}^{N} D_r\,h_r,$$

each term made on its own rank: one all-reduce (a sum whose result every rank receives) gives y
whole on every rank, ready for the residual add and the next RMSNorm, which every rank computes
alike. One is enough, and one is needed: every element of y depends on every block. Attention is
the same pair: cut q, k and v by whole heads (softmax works head by head; with grouped-query
attention a rank's query heads are those of its key/value heads, so `num_key_value_heads` must be
divisible by N), and $W_o$ by the matching input columns: $o = \sum_r O_r\,c_r$. So a layer costs two
all-reduces of [b, s, D], and nothing else; the biases of o and down are added once, after the sum.

**The two ends.** The embedding table is cut by its hidden columns (Meta's `ParallelEmbedding`):
looking up rows of $[E_1 \cdots E_N]$ gives each rank its columns of every vector, and one all-gather
joins them. The LM head is cut by vocabulary rows (Meta's output `ColumnParallelLinear`): each rank
scores its part of the vocabulary and one all-gather joins the logits, so every rank gets them all.
A tied head is the embedding's own array, held by hidden columns: $x E^\top = \sum_r x_r E_r^\top$, a
row-parallel product, one all-reduce. We cut the embedding as Meta does, by hidden columns, because
that is how `consolidated.0r.pth` stores it: a rank reads its shard and nothing else.

**`pretraining_tp` is the same split in one process.** Llama 2's checkpoints record `pretraining_tp`
(1 for 7B and 13B, more for 70B): the number of devices each projection was split over in pretraining.
`column_linear_tp` computes the N row blocks one after another and concatenates them (the all-gather,
in memory); `row_linear_tp` sums the N terms $D_r h_r$ (the all-reduce, as `sum`). Slicing changes
only the order in which sums are rounded, never the mathematics, and transformers 5.x (and 4.57)
ignore the setting; we honour it so that a checkpoint's own recipe can be reproduced.

Both are operations handed to the one layer of `llama.py` (`model.layer_ops`): the layer calls
`column_linear`, `row_linear`, `embed` and `head_linear` and never knows how many ranks there are.
The ranks talk through a communicator (`distributed.py`: MPI through mpi4py, NCCL through CuPy) with
two collectives: `all_reduce(x)`, the elementwise sum over ranks, and `all_gather(x)`, every rank's
x stacked [N, ...].
"""
from __future__ import annotations

from functools import partial

from .backend import xp_of
from .llama import embed, linear


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


# -- across ranks: which slice each rank holds --------------------------------------------------------

# The axis of each matrix along which the ranks cut it (HF's names; Meta's shards cut the same way):
# 0, output rows: column-parallel (q, k, v, gate, up; the head by vocabulary);
# 1, input columns: row-parallel (o, down; the embedding by its hidden columns).
SPLIT_AXIS = {"q_proj": 0, "k_proj": 0, "v_proj": 0, "gate_proj": 0, "up_proj": 0, "lm_head": 0,
              "o_proj": 1, "down_proj": 1, "embed_tokens": 1}


def split_axis(name: str) -> int | None:
    """The axis along which each rank holds a slice of tensor `name`, or None when every rank holds it whole.

    A column-parallel bias is cut with its rows; a row-parallel bias is added once, after the sum, so whole.
    Norms (and a classifier's `score`) are whole: D numbers each.
    >>> split_axis("model.layers.0.self_attn.k_proj.weight"), split_axis("model.layers.0.mlp.down_proj.bias")
    (0, None)
    """
    module, _, kind = name.rpartition(".")
    axis = SPLIT_AXIS.get(module.rpartition(".")[2])
    return None if axis is None or (kind == "bias" and axis == 1) else axis


def part(n: int, rank: int, size: int) -> slice:
    """Rank `rank`'s share of n rows or columns: [n r / N, n (r+1) / N). Whole heads when N divides the heads.

    >>> part(10, 1, 4), part(10, 3, 4)
    (slice(2, 5, None), slice(7, 10, None))
    """
    return slice(n * rank // size, n * (rank + 1) // size)


def sizes(n: int, size: int) -> list[int]:
    """How many of n each rank holds: [len(part(n, r, N)) for each r]."""
    return [n * (r + 1) // size - n * r // size for r in range(size)]


def rank_index(name: str, shape: tuple, rank: int, size: int) -> tuple:
    """The index of rank `rank`'s slice of tensor `name` of `shape`: () for a whole tensor."""
    axis = split_axis(name)
    if axis is None:
        return ()
    index = [slice(None)] * len(shape)
    index[axis] = part(shape[axis], rank, size)
    return tuple(index)


# -- across ranks: the operations handed to the layer -------------------------------------------------

def row_parallel(x, p: dict, all_reduce, linear=linear):
    r"""Meta's `RowParallelLinear`: this rank's term $h_r W_r^\top$ (its input columns), summed over the
    ranks by one all-reduce; the bias added once, after the sum. [b, s, F/N] -> [b, s, D] on every rank.
    `linear` is the product on the rank's slice (`pretraining_tp`'s slices, a dequantizing one)."""
    y = all_reduce(linear(x, {"weight": p["weight"]}))
    return y if p.get("bias") is None else y + p["bias"]


def gather_last(x, counts: list[int], all_gather):
    """Each rank's piece of the last axis, joined in rank order on every rank: [..., counts[r]] -> [..., sum].

    Collectives move equal pieces, so a shorter piece is padded to the longest and cut again after.
    """
    xp = xp_of(x)
    longest = max(counts)
    if x.shape[-1] < longest:
        x = xp.concatenate([x, xp.zeros((*x.shape[:-1], longest - x.shape[-1]), dtype=x.dtype)], axis=-1)
    pieces = all_gather(xp.ascontiguousarray(x))  # [N, ..., longest]
    if len(set(counts)) == 1:
        return xp.moveaxis(pieces, 0, -2).reshape(*x.shape[:-1], -1)  # [..., N, n] -> [..., N*n]
    return xp.concatenate([pieces[r][..., :n] for r, n in enumerate(counts)], axis=-1)


def embed_parallel(p: dict, input_ids, gather):
    """Meta's `ParallelEmbedding`: this rank's hidden columns of each token's row, gathered. [b, s] -> [b, s, D]"""
    return gather(embed(p, input_ids))


def head_parallel(x, p: dict, gather):
    """The LM head cut by vocabulary (Meta's output `ColumnParallelLinear`, gathered): [b, s, D] -> [b, s, V]."""
    return gather(x @ p["weight"].T)


def tied_head_parallel(x, p: dict, columns: slice, all_reduce):
    r"""A tied head is the embedding, held by hidden columns: $\sum_r x_r E_r^\top$, one all-reduce. [b, s, D] -> [b, s, V]"""
    return all_reduce(x[..., columns] @ p["weight"].T)


def parallel_ops(ops: dict, config, comm) -> dict:
    """The operations that spread the layer over `comm.size` ranks, this one being `comm.rank`; `ops` holds
    the column and row linears they wrap. Column-parallel projections need nothing: the rank's weights
    are its rows."""
    rank, n = comm.rank, comm.size
    hidden = partial(gather_last, counts=sizes(config.hidden_size, n), all_gather=comm.all_gather)
    vocab = partial(gather_last, counts=sizes(config.vocab_size, n), all_gather=comm.all_gather)
    head = (partial(tied_head_parallel, columns=part(config.hidden_size, rank, n), all_reduce=comm.all_reduce)
            if config.lm_head_is_embedding else partial(head_parallel, gather=vocab))
    return {"row_linear": partial(row_parallel, all_reduce=comm.all_reduce, linear=ops["row_linear"]),
            "embed": partial(embed_parallel, gather=hidden), "head_linear": head}
