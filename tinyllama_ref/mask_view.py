r"""The attention mask, drawn: which keys each query may attend to (causality, padding, the KV cache).

transformers draws the same picture with `AttentionMaskVisualizer` (transformers.utils.attention_visualizer):
one row per query token, labelled with its piece, one column per key, ■ where the query may attend
and ⬚ where the mask blocks it. Here the grid comes from `llama.attention_mask_bias`, called with the
arguments `model.forward` gives it, so it shows the mask the model computes with, not a re-derivation.

Three things decide a cell (query i, key j):

- causality: key j is not after the query (j <= past + i);
- padding: key j is a real token (attention_mask 1), not the left padding of a batch;
- the KV cache: with `past` tokens cached, the new queries sit at slots past, past + 1, ... and see
  every cached key, so the grid has `past` more columns than rows.

LLaMA has no sliding window: every query sees its whole past.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import llama
from .generation import left_pad

MAY_ATTEND, MASKED = "■", "⬚"  # the squares of transformers' visualizer
GREEN, RESET = "\033[92m", "\033[0m"
PAD_LABEL = "<pad>"


def visible_keys(attention_mask, past: int = 0):
    """Boolean [b, s, t], True where query i (cache slot past + i) may attend key j: the model's own mask.

    attention_mask [b, t] (1 = real token) covers the cached and the new tokens, t = past + s.
    `model.forward` calls `llama.attention_mask_bias(attention_mask, s, past + s, past)`; so do we.

    >>> visible_keys(np.array([[0, 1, 1]])).astype(int).tolist()  # one pad token on the left
    [[[0, 0, 0], [0, 1, 0], [0, 1, 1]]]
    """
    t = attention_mask.shape[-1]
    return llama.attention_mask_bias(attention_mask, t - past, t, past)[:, 0] == 0  # [b, s, t]


def draw_grid(labels: list[str], visible, past: int = 0, color: bool = False) -> str:
    """The grid of one sequence, in the layout of transformers' `generate_attention_matrix_from_mask`.

    labels: the t pieces (cached, then new); visible [s, t] from `visible_keys`. Each row is
    `'piece' : slot ■ ⬚ ...`; with a cache, a `|` separates the cached keys from the new ones.
    color=True paints a query's own key green, as transformers does.
    """
    s, t = visible.shape
    queries = labels[past:]
    label_width = max(len(repr(w)) for w in queries)
    index_width = max(2, len(str(t - 1)))
    indent = " " * (label_width + index_width + 3)  # the width of "'piece': NN "

    def cells(row: list[str]) -> str:
        return " ".join(row[:past] + ["|"] + row[past:]) if past else " ".join(row)

    legend = f" {MAY_ATTEND}: may attend   {MASKED}: masked   (row: a query, column: a key)"
    if color:
        legend += f"   {GREEN}{MAY_ATTEND}{RESET}: i == j (diagonal)"
    lines = [legend, indent + "Attention Matrix"]
    digits = [str(j).rjust(len(str(t - 1))) for j in range(t)]  # column numbers, written downwards
    for k in range(len(str(t - 1))):
        lines.append(indent + cells([d[k] for d in digits]))
    for i, word in enumerate(queries):
        slot = past + i
        row = []
        for j in range(t):
            square = MAY_ATTEND if visible[i, j] else MASKED
            row.append(f"{GREEN}{square}{RESET}" if color and j == slot and visible[i, j] else square)
        lines.append(f"{repr(word).ljust(label_width)}: {str(slot).rjust(index_width)} {cells(row)}")
    return "\n".join(lines)


def visualize_mask(model_or_config, tokenizer, text, past: int = 0, pad_left: int = 0, color: bool = False,
                   name: str | None = None) -> str:
    """Draw which tokens each token may attend to, for one text or a left-padded batch of texts.

    model_or_config: a `Model` or a `LlamaConfig` (named in the title; LLaMA's mask depends on no
    setting). text: a str, or a list of str batched with left padding to the longest, as
    `generate_batch` pads them. pad_left: extra padding tokens on the left of every text.
    past: how many of the first tokens are already in the KV cache; the rows are then the new
    tokens only, and the first `past` columns the cached keys. The tokens and pad_left together must fit
    the model's context. name: the model's name in the title (default: the directory a `Model` was
    loaded from). Returns the text; one grid per text.
    """
    config = getattr(model_or_config, "config", model_or_config)
    if not hasattr(config, "model_type"):
        raise TypeError(f"model_or_config must be a Model or a LlamaConfig, got {type(model_or_config).__name__}")
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or not all(isinstance(x, str) for x in texts):
        raise TypeError("text must be a str or a non-empty list of str")
    for arg, v in (("past", past), ("pad_left", pad_left)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{arg} must be a non-negative integer, got {v!r}")
    rows = [tokenizer.encode(x) for x in texts]
    for k, ids in enumerate(rows):
        if not ids:
            raise ValueError(f"text {k + 1} ({texts[k]!r}) encodes to no tokens: nothing to draw")
    longest, context = max(map(len, rows)), config.max_position_embeddings
    if longest + pad_left > context:  # checked before the grid is made: it grows as the square of its width
        raise ValueError(f"{longest} tokens and pad_left = {pad_left} make {longest + pad_left} positions, more "
                         f"than the model's context (max_position_embeddings = {context})")
    _, attention_mask = left_pad(rows, pad_id=0)  # [b, t], 1 = real token: generate_batch's padding
    attention_mask = np.pad(attention_mask, ((0, 0), (pad_left, 0)))  # pad_left more on the left of every row
    width = attention_mask.shape[1]
    if past >= width:
        raise ValueError(f"past = {past} leaves no new token: the batch has {width} positions, so past must be "
                         f"below {width}")
    visible = visible_keys(attention_mask, past)  # [b, s, t]

    name = name or Path(getattr(model_or_config, "source", "") or "").name
    title = f"Attention mask of {config.model_type}" + (f" ({name})" if name else "")
    blocks = []
    for k, ids in enumerate(rows):
        n_pad = width - len(ids)
        labels = [PAD_LABEL] * n_pad + [tokenizer.id_to_piece(i) for i in ids]
        facts = [f"text {k + 1} of {len(rows)}: {len(ids)} tokens"]
        if n_pad:
            facts.append(f"{n_pad} padding on the left (attention_mask 0)")
        if past:
            cached = ", ".join(f"{j} {labels[j]!r}" for j in range(past))
            facts.append(f"{past} in the KV cache (keys {cached})")
        if not visible[k].any(-1).all():
            facts.append(f"a row with no {MAY_ATTEND} (a padding query) is uniform after softmax, and its output "
                         f"is never used")
        blocks.append(f"{title}, " + "; ".join(facts) + "\n" + draw_grid(labels, visible[k], past, color))
    return "\n\n".join(blocks)
