r"""Perplexity of a text, by the sliding-window recipe of transformers' documentation.

Perplexity is the exponentiated mean negative log-likelihood of the tokens of a text:

$$\mathrm{PPL}(X) = \exp\Big\{-\frac{1}{t}\sum_{i=1}^{t} \log p_\theta(x_i \mid x_{<i})\Big\}$$

A model sees at most `max_position_embeddings` tokens, so a long text is read in windows of
`max_length` tokens that start every `stride` tokens. Each window scores only the tokens that
no earlier window scored (its targets); the tokens before them are context, their labels -100.
A smaller stride gives each scored token more context, and usually a lower perplexity.

This follows, step for step, the loop of the page "Perplexity of fixed-length models"
(https://huggingface.co/docs/transformers/perplexity, docs/source/en/perplexity.md in the
transformers repository), including its weighting: each window's mean loss is multiplied by
(valid targets - 1), "due to the internal label shift". That count is exact for the first window;
for the later ones the loss covers every target while the weight counts one fewer. We keep the
page's weighting, so that the numbers are the page's.
"""
from __future__ import annotations

import codecs
import math

import numpy as np

MAX_TEXT_BYTES = 64 * 2**20  # wikitext-2's test split, the docs' example, is 1.3 MB
CHUNK = 2**20


def read_text(stream, name: str, limit: int | None = None) -> str:
    """The UTF-8 text of a binary stream, read a chunk at a time and refused as soon as it shows it is not a
    text to score: a NUL byte, bytes that are not UTF-8, or more than `limit` bytes (default MAX_TEXT_BYTES),
    so /dev/zero or an endless pipe fails after one chunk, or `limit`, not when memory runs out. `name` is
    said in the error."""
    limit = MAX_TEXT_BYTES if limit is None else limit
    decoder, parts, n = codecs.getincrementaldecoder("utf-8")(), [], 0
    while chunk := stream.read(CHUNK):
        if (nul := chunk.find(b"\0")) >= 0:
            raise ValueError(f"{name}: a NUL byte at byte {n + nul}: not a text file")
        n += len(chunk)
        if n > limit:
            raise ValueError(f"{name}: more than {limit // 2**20} MiB; perplexity holds the whole text and its "
                             f"tokens in memory: score a part of it")
        try:
            parts.append(decoder.decode(chunk))
        except UnicodeDecodeError as e:
            raise ValueError(f"{name}: not UTF-8 text ({e.reason} at byte {n - len(chunk) + e.start})") from None
    try:
        return "".join(parts) + decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not UTF-8 text (it ends inside a character: {e.reason})") from None


def windows(seq_len: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, trg_len) of each window of the docs' loop: tokens [begin, end), the last trg_len scored.

    >>> windows(7, max_length=4, stride=2)
    [(0, 4, 4), (2, 6, 2), (4, 7, 1)]
    """
    out, prev_end = [], 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        out.append((begin, end, end - prev_end))  # trg_len may differ from stride in the last window
        prev_end = end
        if end == seq_len:
            break
    return out


def check_window(seq_len: int, context: int, max_length: int | None, stride: int | None) -> tuple[int, int]:
    """max_length (default: the model's context) and stride (default: max_length), checked against each other."""
    if seq_len < 2:
        raise ValueError(f"the text has {seq_len} token{'s' if seq_len != 1 else ''}: perplexity needs at least 2 "
                         f"(the first token is only context)")
    max_length = context if max_length is None else max_length
    for name, v in (("max_length", max_length), ("stride", stride)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (a window of one token predicts nothing), got {max_length}")
    if max_length > context:
        raise ValueError(f"max_length {max_length} is longer than the model's context "
                         f"(max_position_embeddings = {context})")
    stride = max_length if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    if stride > max_length:
        raise ValueError(f"stride {stride} is longer than max_length {max_length}: the tokens between two windows "
                         f"would never be scored")
    return int(max_length), int(stride)


def perplexity_of_ids(model, ids, max_length: int | None = None, stride: int | None = None,
                      progress: bool = False) -> float:
    """Perplexity of a sequence of token ids (see `perplexity`)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    max_length, stride = check_window(ids.size, model.config.max_position_embeddings, max_length, stride)
    plan = windows(ids.size, max_length, stride)
    if progress:
        from tqdm.auto import tqdm

        plan = tqdm(plan, desc="perplexity", unit="window")
    nll_sum, n_tokens = 0.0, 0
    for begin, end, trg_len in plan:
        input_ids = ids[None, begin:end]  # [1, end - begin]
        target_ids = input_ids.copy()
        target_ids[:, :-trg_len] = -100  # context: scored by an earlier window
        num_loss_tokens = int((target_ids != -100).sum()) - target_ids.shape[0]  # minus batch_size: the shift
        if num_loss_tokens == 0:
            continue  # weight 0 (trg_len 1); the docs' loop would add 0 x NaN when the window is a single token
        neg_log_likelihood = float(model(input_ids, labels=target_ids).loss)
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
    return math.exp(nll_sum / n_tokens)


def perplexity(model, tokenizer, text: str, max_length: int | None = None, stride: int | None = None,
               progress: bool = False) -> float:
    r"""Perplexity of `text` under `model`: $\exp(\text{summed NLL} / \text{scored tokens})$ over sliding windows.

    The text is encoded once, as `tokenizer(text)` does in the docs (BOS included when the
    checkpoint adds it). max_length: the window (default: the model's `max_position_embeddings`);
    stride: how far each window starts after the previous one (default: max_length, i.e. disjoint
    windows). progress: a tqdm bar on stderr, one step per window. The loop, the -100 labels and
    the weighting are those of transformers' "Perplexity of fixed-length models" page
    (https://huggingface.co/docs/transformers/perplexity).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text:
        raise ValueError("the text is empty: perplexity needs at least 2 tokens")
    return perplexity_of_ids(model, tokenizer.encode(text), max_length, stride, progress)
