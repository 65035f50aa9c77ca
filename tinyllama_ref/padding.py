"""Rows of token ids cut and padded to a width: the padding behind `tok(texts, padding=True)`,
`tok.batch_encode` and the left-padded batches of `generate_batch`, and the truncation of
`tok(texts, truncation=True)`.

Plain lists in, plain lists out, no tokenizer needed: generation and the mask view pad with the
same function as the tokenizer.
"""
from __future__ import annotations


def _cut(ids: list[int], keep: int, side: str) -> list[int]:
    return ids[:keep] if side == "right" else ids[len(ids) - keep:]


def truncate_longest_first(a: list[int], b: list[int] | None, budget: int, side: str = "right"):
    """Cut a (and b) to `budget` tokens in all, as the tokenizers library's LongestFirst does:
    the shorter part keeps what it can up to half, the longer one takes the rest.

    >>> truncate_longest_first(list(range(7)), [10, 11], 3)
    ([0, 1], [10])
    """
    if budget < 0:  # max_length leaves no room even for the special tokens: the tokenizers library cuts nothing
        return a, b
    if b is None:
        return (_cut(a, budget, side) if len(a) > budget else a), None
    if len(a) + len(b) <= budget:
        return a, b
    n1, n2 = sorted((len(a), len(b)))
    n2 = n1 if n1 > budget else max(n1, budget - n1)
    if n1 + n2 > budget:
        n1 = budget // 2
        n2 = n1 + budget % 2
    if len(a) > len(b):
        n1, n2 = n2, n1
    return _cut(a, n1, side), _cut(b, n2, side)


def pad_rows(rows: list[list[int]], width: int, pad: int, side: str) -> tuple[list[list[int]], list[list[int]]]:
    """Rows padded with `pad` to `width` on the left or right, and their attention masks (0 on padding);
    a row longer than width is left as it is.

    >>> pad_rows([[5, 6, 7], [8]], 3, 0, "left")
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    ids, masks = [], []
    for row in rows:
        fill = max(width - len(row), 0)
        ids.append([pad] * fill + list(row) if side == "left" else list(row) + [pad] * fill)
        masks.append([0] * fill + [1] * len(row) if side == "left" else [1] * len(row) + [0] * fill)
    return ids, masks
