r"""Text generation: prefill the prompt once, then one token per step from the KV cache.

Each step turns the last position's logits into a choice of next token, in transformers' order:

1. repetition penalty (CTRL, Keskar et al. 2019): a logit $z$ of a token already in the sequence
   becomes $z / p$ if positive, $z \cdot p$ if negative;
2. temperature: $z / T$ ($T = 0$ means greedy: take the argmax);
3. top-k: keep the $k$ largest logits (ties with the $k$-th kept);
4. top-p (nucleus, Holtzman et al. 2019): keep the smallest set of most likely tokens whose
   probabilities add up to at least $p$;

then sample from the softmax of what is left, with a seeded NumPy generator (same seed, same text).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from . import backend as B
from .config import SAMPLING_RULES, check_sampling_value
from .kv_cache import KVCache
from .padding import pad_rows

NEG_INF = -np.inf


class ContextLengthError(ValueError):
    """The prompt does not fit in the model's context window."""


# -- the logits processors (NumPy, one row per sequence) -----------------------------------

def apply_repetition_penalty(logits: np.ndarray, seen: Sequence[Sequence[int]], penalty: float) -> np.ndarray:
    """Penalise every token that already occurs in each row's sequence (prompt included), as HF does.

    >>> apply_repetition_penalty(np.array([[2.0, -2.0, 1.0]]), [[0, 1]], 2.0)
    array([[ 1., -4.,  1.]])
    """
    if penalty == 1.0:
        return logits
    out = logits.copy()
    for row, ids in enumerate(seen):
        idx = np.unique(np.asarray(ids, dtype=np.int64))
        z = out[row, idx]
        out[row, idx] = np.where(z < 0, z * penalty, z / penalty)
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """$z / T$: T < 1 sharpens the distribution, T > 1 flattens it."""
    return logits / temperature


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits per row (and any tied with the k-th); the rest become -inf.

    >>> top_k_mask(np.array([[1.0, 3.0, 2.0, 3.0]]), 2)
    array([[-inf,   3., -inf,   3.]])
    """
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]
    return np.where(logits < kth, NEG_INF, logits)


def top_p_mask(logits: np.ndarray, p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """Keep the most likely tokens until their probabilities reach p (HF's TopPLogitsWarper).

    Sorted ascending, a token is dropped when the cumulative probability up to and including it
    is <= 1 - p; the most likely `min_tokens_to_keep` always stay.

    >>> top_p_mask(np.log(np.array([[0.5, 0.3, 0.2]])), 0.7).round(2)
    array([[-0.69, -1.2 ,  -inf]])
    """
    if p >= 1.0:
        return logits
    order = np.argsort(logits, axis=-1, kind="stable")  # ascending
    sorted_logits = np.take_along_axis(logits, order, axis=-1)
    probs = _softmax(sorted_logits)
    drop_sorted = np.cumsum(probs, axis=-1) <= (1 - p)
    drop_sorted[:, -min_tokens_to_keep:] = False
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, NEG_INF, logits)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class SamplingParams:
    """How to pick each next token (defaults: the checkpoint's generation_config.json, else greedy).

    The one place the sampling arguments are checked: `generate`, `stream`, `generate_batch`, `chat`
    and the CLI all build one, and a value out of range is refused here, by name.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = (self.stop,)  # one stop string, as in transformers; a list is several
        self.stop = tuple(self.stop or ())
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop={self.stop!r} must be a string or a list of non-empty strings")
        for name in SAMPLING_RULES:
            check_sampling_value(name, getattr(self, name))


def next_tokens(logits: np.ndarray, seen: Sequence[Sequence[int]], sp: SamplingParams,
                rng: np.random.Generator) -> np.ndarray:
    """One token id per row from the last-position logits [batch, vocab]."""
    z = apply_repetition_penalty(logits.astype(np.float64), seen, sp.repetition_penalty)
    if sp.temperature == 0:
        return z.argmax(axis=-1)
    z = top_p_mask(top_k_mask(apply_temperature(z, sp.temperature), sp.top_k), sp.top_p)
    probs = _softmax(z)
    u = rng.random(len(probs))[:, None]
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)


# -- the decoding loop ---------------------------------------------------------------------

@dataclass
class GenerationStats:
    """Timings and why generation stopped ("eos", "stop", "length", "context")."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""
    messages: list = field(default_factory=list)

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        steps = max(self.new_tokens - 1, 0)  # the first new token comes from the prefill
        return steps / self.decode_seconds if self.decode_seconds else 0.0


def left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to one length: ids [b, s] and attention_mask [b, s] (1 = real token), as int64
    arrays: the tokenizer's padder (`pad_rows`, the one behind `tok(texts, padding=True)`) to the longest.

    >>> left_pad([[5, 6, 7], [8]], 0)[0].tolist()
    [[5, 6, 7], [0, 0, 8]]
    """
    n = max(len(x) for x in batch)
    ids, mask = pad_rows(batch, n, pad_id, "left")
    return (np.array(ids, dtype=np.int64).reshape(len(batch), n),
            np.array(mask, dtype=np.int64).reshape(len(batch), n))


def generate_ids(model, prompts: Sequence[Sequence[int]], sp: SamplingParams, eos_ids: Sequence[int] = (),
                 pad_id: int = 0, stats: GenerationStats | None = None) -> Iterator[np.ndarray]:
    """Yield the next token of every row, step by step; a finished row (EOS) keeps yielding -1.

    Prompts are left-padded; positions count from each row's first real token, so a padded row
    computes what it would alone.
    """
    stats = stats if stats is not None else GenerationStats()
    xp = model.xp
    limit = model.config.max_position_embeddings
    longest = max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0:
        raise ValueError("empty prompt: give at least one token (e.g. BOS)")
    if longest >= limit:
        raise ContextLengthError(f"the prompt has {longest} tokens, but the model's context is {limit} "
                                 f"(max_position_embeddings): shorten the prompt")
    ids, mask = left_pad(prompts, pad_id)
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    seen = [list(p) for p in prompts]
    rng = np.random.default_rng(sp.seed)
    finished = np.zeros(len(prompts), dtype=bool)
    eos = np.asarray(list(eos_ids), dtype=np.int64)
    stats.prompt_tokens = int(mask.sum())

    t0 = time.perf_counter()
    # What the steps need lives on the model's device, allocated once for the whole generation: the KV
    # cache, the attention mask (the prompt's padding, then a 1 for every new token) and the next positions.
    b, n = ids.shape
    capacity = min(n + sp.max_new_tokens, limit)
    cache = KVCache.allocate(model.config, b, capacity, like=model.params["model"]["embed_tokens"]["weight"],
                             shards=model.shards)
    full_mask = xp.ones((b, capacity), dtype=np.int64)
    full_mask[:, :n] = xp.asarray(mask)  # copied up once
    next_positions = full_mask[:, :n].sum(axis=-1, keepdims=True)  # [b, 1]: each row's count of real tokens
    out = model(ids, attention_mask=full_mask[:, :n], position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    try:
        for step in range(sp.max_new_tokens):
            logits = B.to_numpy(out.logits[:, -1]).astype(np.float32)  # the one copy down per step
            if step == 0:
                stats.prefill_seconds = time.perf_counter() - t0
                t0 = time.perf_counter()
            token = np.where(finished, -1, next_tokens(logits, seen, sp, rng))
            for row, t in enumerate(token):
                if t >= 0:
                    seen[row].append(int(t))
            stats.new_tokens += 1
            finished |= np.isin(token, eos) & (token >= 0)
            stats.stop_reason = ("eos" if finished.all() else "length" if step + 1 == sp.max_new_tokens
                                 else "context" if cache.length + 1 >= limit else "")
            yield token
            if stats.stop_reason:
                break
            feed = np.where(token < 0, pad_id, token)[:, None]  # checked on the host: the one copy up per step
            out = model(feed, attention_mask=full_mask[:, :cache.length + 1], position_ids=next_positions,
                        past_key_values=cache, use_cache=True)
            next_positions = next_positions + 1  # on the device
        if stats.stop_reason == "context":
            stats.messages.append(f"stopped: the context window of {limit} tokens is full")
        stats.stop_reason = stats.stop_reason or "length"
    finally:  # also when the caller stops early (a stop string): the timings stay right
        stats.decode_seconds = time.perf_counter() - t0


# -- text in, text out -------------------------------------------------------------------------

def sampling_defaults(model, **overrides) -> SamplingParams:
    """SamplingParams from the checkpoint's generation_config.json, overridden by explicit arguments."""
    g = model.generation_config or {}
    base = {"max_new_tokens": g.get("max_new_tokens", 64)}
    if g.get("do_sample"):
        base.update(temperature=g.get("temperature", 1.0), top_k=g.get("top_k", 50), top_p=g.get("top_p", 1.0))
    base["repetition_penalty"] = g.get("repetition_penalty", 1.0)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return SamplingParams(**base)


def sampling_for(model, sampling: SamplingParams | None = None, **overrides) -> SamplingParams:
    """The SamplingParams a call runs with: `sampling` (else the checkpoint's defaults), with the
    keyword arguments that are not None on top: `stream(m, t, "x", temperature=0.8)` builds one."""
    if sampling is None:
        return sampling_defaults(model, **overrides)
    if not isinstance(sampling, SamplingParams):
        raise TypeError(f"sampling must be a SamplingParams, got {type(sampling).__name__} (give the sampling "
                        f"arguments by name: max_new_tokens=..., temperature=...)")
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(sampling, **given) if given else sampling


def eos_ids_of(model, tokenizer) -> list[int]:
    """Every id that ends generation: the tokenizer's EOS and the generation config's."""
    ids = set()
    for source in (getattr(tokenizer, "eos_id", None), (model.generation_config or {}).get("eos_token_id"),
                   model.config.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(x) for x in source)
    return sorted(ids)


class _TextDeltas:
    """Turns a growing list of token ids into the text they add, emitting only finished characters.

    Decoding prompt + new tokens and subtracting the decoded prompt keeps the leading space that a
    SentencePiece decoder drops from a sequence's first word. A trailing U+FFFD means a multi-byte
    character is still incomplete, so it is held back until its last byte arrives.
    """

    def __init__(self, tokenizer, prompt_ids: Sequence[int]):
        self.tokenizer, self.prompt = tokenizer, list(prompt_ids)
        self.prefix = tokenizer.decode(self.prompt, skip_special_tokens=True)
        self.ids: list[int] = []
        self.emitted = 0

    def text(self) -> str:
        full = self.tokenizer.decode(self.prompt + self.ids, skip_special_tokens=True)
        return full[len(self.prefix):] if full.startswith(self.prefix) else \
            self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, token: int, final: bool = False) -> str:
        if token >= 0:
            self.ids.append(int(token))
        text = self.text()
        if not final and text.endswith("\ufffd"):
            return ""
        delta, self.emitted = text[self.emitted:], len(text)
        return delta


def stream(model, tokenizer, prompt: str | Sequence[int], sampling: SamplingParams | None = None, *,
           stats: GenerationStats | None = None, add_bos: bool | None = None, **sampling_args) -> Iterator[str]:
    """Yield the generated text piece by piece as tokens arrive (complete characters only).

    `prompt` is text (encoded with the tokenizer, BOS as the checkpoint says) or a list of ids.
    How to sample: a SamplingParams, or its fields by name (max_new_tokens, temperature, top_k, top_p,
    repetition_penalty, seed, stop), which override it or the checkpoint's generation_config.json.
    Stops at EOS, at a stop string (not included in the text), after max_new_tokens, or when the
    context window is full. Pass a GenerationStats to read timings and the stop reason afterwards.
    """
    sp = sampling_for(model, sampling, **sampling_args)
    prompt_ids = list(prompt) if not isinstance(prompt, str) else tokenizer.encode(prompt, add_bos=add_bos)
    stats = stats if stats is not None else GenerationStats()
    deltas = _TextDeltas(tokenizer, prompt_ids)
    hold = max((len(s) for s in sp.stop), default=0)
    pending = ""  # text not yet yielded because it might begin a stop string
    eos = eos_ids_of(model, tokenizer)
    for token in generate_ids(model, [prompt_ids], sp, eos, stats=stats):
        t = int(token[0])
        if t in eos:
            continue  # the generator ends itself after EOS (and records why)
        pending += deltas.push(t)
        cut = _find_stop(pending, sp.stop)
        if cut is not None:
            stats.stop_reason = "stop"
            yield pending[:cut]
            return
        if len(pending) > hold:
            safe = len(pending) - max(hold - 1, 0)
            yield pending[:safe]
            pending = pending[safe:]
    pending += deltas.push(-1, final=True)  # whatever was held back (an unfinished character at the end)
    cut = _find_stop(pending, sp.stop)
    if cut is not None:
        stats.stop_reason = "stop"
    tail = pending[:cut] if cut is not None else pending
    if tail:
        yield tail


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def generate(model, tokenizer, prompt: str | Sequence[int], return_full_text: bool = False, **kwargs) -> str:
    """The generated continuation of `prompt` as one string, *without* the prompt (see `stream` for the
    arguments: sampling=SamplingParams(...), or its fields by name). return_full_text=True puts the
    prompt's text in front, as transformers' text-generation pipeline does by default (a prompt of ids
    is decoded without its special tokens)."""
    text = "".join(stream(model, tokenizer, prompt, **kwargs))
    if not return_full_text:
        return text
    return (prompt if isinstance(prompt, str) else tokenizer.decode(list(prompt), skip_special_tokens=True)) + text


def generate_batch(model, tokenizer, prompts: Sequence[str], sampling: SamplingParams | None = None, *,
                   add_bos: bool | None = None, **sampling_args) -> list[str]:
    """Generate for several prompts at once (left-padded, one forward pass per step for the batch).

    Sampling as in `stream`, stop strings aside. Greedy output equals generating each prompt alone.
    With sampling, rows draw from one generator, so a row's text depends on the batch it is in (as in
    transformers).
    """
    sp = sampling_for(model, sampling, **sampling_args)
    if sp.stop:
        raise TypeError("generate_batch takes no stop strings: use generate for each prompt")
    ids = [tokenizer.encode(p, add_bos=add_bos) for p in prompts]
    eos = eos_ids_of(model, tokenizer)
    pad = getattr(tokenizer, "pad_id", None)
    pad = pad if isinstance(pad, int) and pad >= 0 else (eos[0] if eos else 0)
    outs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for token in generate_ids(model, ids, sp, eos, pad_id=pad):
        for row, t in enumerate(token):
            if t < 0 or done[row]:
                continue
            if int(t) in eos:
                done[row] = True
            else:
                outs[row].append(int(t))
    texts = []
    for p, o in zip(ids, outs):
        d = _TextDeltas(tokenizer, p)
        d.ids = o
        texts.append(d.text())
    return texts
