r"""Volume 2: training a LLaMA from scratch in NumPy: data, initial weights, the loop, the checkpoint.

    for step in 1..N:  loss, grads = value_and_grad(model, batch)     (backprop.py)
                       clip the gradients' global norm to 1           (optim.py)
                       AdamW at the step's learning rate              (optim.py: warmup, then cosine)

The recipe is the one `tools/train_bundled_model.py` trains the bundled model with in PyTorch, so the two
can be run side by side: windows of `seq_len` tokens that begin at a line of text and are prefixed with
<s>, AdamW with betas (0.9, 0.95) and weight decay 0.1 on matrices only, gradients clipped to norm 1,
a linear warmup and a cosine decay to a tenth of the peak rate.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .backend import keep_freed_memory
from .backprop import value_and_grad
from .optim import AdamW, clip_grad_norm, cosine_with_warmup


@dataclass(frozen=True)
class TrainSettings:
    """The schedule and optimiser settings (those of `tools/train_bundled_model.py`, whose names they keep)."""

    steps: int = 1600
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 80
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0


# ---------------------------------------------------------------- the data


def encode_text(tokenizer, text: str, held_out_every: int = 50):
    r"""A text as two token streams, train and validation, and the offsets where its lines begin.

    A blank line separates documents; each document is [<s>] line line ... [</s>], the lines encoded one by
    one (as `tools/train_bundled_model.py` encodes the chapters and verses of the KJV). Document $i$ is
    held out for validation when $i \bmod 50 = 7$ (none are when there are fewer than 8).
    Returns {"train": (stream, starts), "val": (stream, starts)}: int64 arrays.
    """
    documents = [[line for line in block.split("\n") if line.strip()] for block in text.split("\n\n")]
    documents = [doc for doc in documents if doc]
    splits = {"train": ([], []), "val": ([], [])}
    for i, lines in enumerate(documents):
        stream, starts = splits["val" if held_out_every and i % held_out_every == 7 else "train"]
        stream.append(tokenizer.bos_token_id)
        for line in lines:
            starts.append(len(stream))
            stream.extend(tokenizer.encode(line, add_special_tokens=False))
        stream.append(tokenizer.eos_token_id)
    return {name: (np.array(stream, dtype=np.int64), np.array(starts, dtype=np.int64))
            for name, (stream, starts) in splits.items()}


def sample_batch(stream, starts, batch_size: int, seq_len: int, rng, bos_id: int = 1):
    """`batch_size` windows of seq_len + 1 tokens: <s>, then the text from a random line start. [B, seq_len + 1]

    Position i of a window predicts token i + 1, so a window holds seq_len predictions.
    """
    starts = starts[starts + seq_len <= len(stream)]
    if len(starts) == 0:
        raise ValueError(f"the text holds no window of {seq_len} tokens after a line start: give more text or a "
                         f"smaller --seq-len")
    chosen = rng.choice(starts, size=batch_size)
    return np.stack([np.concatenate([[bos_id], stream[s:s + seq_len]]) for s in chosen])


# ---------------------------------------------------------------- the model


def initial_tensors(config, seed: int = 0) -> dict:
    r"""Fresh weights as transformers initialises a `LlamaForCausalLM`: every matrix and the embedding from
    $\mathcal N(0, \sigma^2)$ with $\sigma$ = `initializer_range`, biases 0, RMSNorm weights 1 (float32)."""
    from .formats.checkpoint import expected_shapes

    rng = np.random.default_rng(seed)
    shapes, optional = expected_shapes(config)
    tensors = {}
    for name, shape in shapes.items():
        if name in optional:  # a tied head: the embedding is the head
            continue
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, dtype=np.float32)
        elif name.endswith(".bias"):
            tensors[name] = np.zeros(shape, dtype=np.float32)
        else:
            tensors[name] = config.initializer_range * rng.standard_normal(shape, dtype=np.float32)
    return tensors


def decays(name: str, arr) -> bool:
    """Weight decay applies to matrices (the projections, the embedding, the head), not to RMSNorm's gains or
    biases: the bundled model's rule."""
    return arr.ndim >= 2


# ---------------------------------------------------------------- the loop


def value_and_grad_threads(model, input_ids, labels, workers: int = 2, checkpoint: bool = False):
    r"""`value_and_grad` of a whole batch, computed by `workers` threads on shares of its rows (NumPy only).

    NumPy lets go of Python's lock inside BLAS and its loops over large arrays, so the threads run side by
    side, each with one BLAS thread: the softmaxes, norms and activations, which NumPy runs on one core,
    are spread too. Share $k$ keeps $n_k$ labels; the batch's loss and gradients are the kept-count
    weighted means $\sum_k (n_k / n)\,L_k$ and $\sum_k (n_k / n)\,\nabla L_k$, which is what one call
    on the whole batch computes (up to rounding).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .backend import blas_threads
    from .formats.checkpoint import flatten

    input_ids, labels = np.asarray(input_ids), np.asarray(labels)
    shares = [rows for rows in np.array_split(np.arange(len(input_ids)), workers) if len(rows)]
    kept = [int((labels[rows, 1:] != -100).sum()) for rows in shares]
    if len(shares) < 2 or model.xp is not np or 0 in kept:
        return value_and_grad(model, input_ids, labels, checkpoint=checkpoint)
    blas = blas_threads()
    before = blas[0]() if blas else None
    if blas:
        blas[1](1)  # one BLAS thread per worker: the workers are the parallelism
    try:
        with ThreadPoolExecutor(len(shares)) as pool:
            results = list(pool.map(lambda rows: value_and_grad(model, input_ids[rows], labels[rows],
                                                                checkpoint=checkpoint), shares))
    finally:
        if blas:
            blas[1](before)
    weights = [k / sum(kept) for k in kept]
    loss = sum(w * float(r[0]) for w, r in zip(weights, results))
    total, seen = flatten(results[0][1]), set()
    others = [flatten(r[1]) for r in results[1:]]
    for name, g in total.items():
        if id(g) in seen:  # a tied head: one array, summed once
            continue
        seen.add(id(g))
        g *= g.dtype.type(weights[0])
        for w, other in zip(weights[1:], others):
            g += g.dtype.type(w) * other[name]
    return np.asarray(loss, dtype=model.params["model"]["norm"]["weight"].dtype), results[0][1]


def gradients(model, checkpoint: bool = False, workers: int = 1) -> Callable:
    """`(input_ids, labels) -> (loss, grads)` for the whole model: `value_and_grad`, or with `workers` > 1
    the batch shared by that many threads (`value_and_grad_threads`)."""
    if workers > 1:
        return lambda ids, labels: value_and_grad_threads(model, ids, labels, workers, checkpoint)
    return lambda ids, labels: value_and_grad(model, ids, labels, checkpoint=checkpoint)


def train_step(value_and_grad_fn: Callable, optimizer: AdamW, input_ids, labels, lr: float | None = None,
               grad_clip: float | None = None):
    """One optimiser step: `loss, grads = value_and_grad_fn(input_ids, labels)` (grads shaped as the
    optimizer's params: the model's, or a LoRA adapter's), the global norm clipped to `grad_clip`, AdamW at
    `lr` (each left as it is when None). Returns (loss, the norm before clipping or None)."""
    loss, grads = value_and_grad_fn(input_ids, labels)
    norm = None if grad_clip is None else clip_grad_norm(grads, grad_clip)
    if lr is not None:
        optimizer.lr = lr
    optimizer.step(grads)
    return float(loss), norm


def fit(model, next_batch: Callable, settings: TrainSettings, on_step: Callable | None = None,
        checkpoint: bool = False, workers: int = 1) -> list[float]:
    """Train `model` in place for `settings.steps` steps on `next_batch()` ([B, L] ids, used as their own
    labels), `workers` threads sharing each batch; `on_step(step, loss, lr)` after each one. Returns the losses."""
    s = settings
    optimizer = AdamW(model.params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay,
                      no_decay=lambda name, arr: not decays(name, arr))
    step_grads = gradients(model, checkpoint, workers)
    losses = []
    for step in range(s.steps):
        lr = cosine_with_warmup(step, s.steps, s.warmup_steps, s.lr, s.min_lr)
        rows = next_batch()
        loss, _ = train_step(step_grads, optimizer, rows, rows, lr, s.grad_clip)
        losses.append(loss)
        if on_step is not None:
            on_step(step, loss, lr)
    return losses


def mean_loss(model, batches) -> float:
    """The mean causal-LM loss over batches of ids (validation: no gradients)."""
    return float(np.mean([float(model(rows, labels=rows).loss) for rows in batches]))


def train_from_text(text_file: str | Path, out: str | Path, settings: TrainSettings, bundled: Path,
                    model_config="bundled", progress: bool = True, log=print, workers: int = 1) -> dict:
    """The `tinyllama-ref train` command: a new model (the config of the model in `bundled`, or a config.json,
    and `bundled`'s tokenizer) trained on a text file, written as a Hugging Face checkpoint to `out`.
    Returns the training record (also written beside the weights as training_log.json)."""
    import tinyllama_ref as tl
    from .config import LlamaConfig
    from .formats.hf_writer import save_pretrained

    keep_freed_memory()
    config_path = bundled / "config.json" if model_config == "bundled" else Path(model_config)
    config = LlamaConfig.from_json(config_path)
    tokenizer = tl.load_tokenizer(bundled)
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"{config_path}: vocab_size {config.vocab_size} is smaller than the bundled tokenizer's "
                         f"{len(tokenizer)} tokens")
    data = encode_text(tokenizer, Path(text_file).read_text(encoding="utf-8"))
    model = tl.build_model(config, initial_tensors(config, settings.seed))
    rng = np.random.default_rng(settings.seed)
    next_batch = lambda: sample_batch(*data["train"], settings.batch_size, settings.seq_len, rng,  # noqa: E731
                                      tokenizer.bos_token_id)
    bar = _progress(settings.steps) if progress else None
    started = time.perf_counter()

    def on_step(step, loss, lr):
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if step % 50 == 0 or step == settings.steps - 1:
            log(f"step {step:5d}  loss {loss:.4f}  lr {lr:.2e}  {time.perf_counter() - started:7.1f}s")

    losses = fit(model, next_batch, settings, on_step, workers=workers)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    record = {"settings": dataclasses.asdict(settings), "train_loss": [round(x, 4) for x in losses],
              "train_seconds": round(seconds, 1), "tokens_per_second": round(
                  settings.steps * settings.batch_size * settings.seq_len / seconds, 1)}
    if len(data["val"][1]):
        val_rng = np.random.default_rng(settings.seed + 1)
        record["val_loss"] = round(mean_loss(model, [sample_batch(*data["val"], settings.batch_size,
                                                                  settings.seq_len, val_rng, tokenizer.bos_token_id)
                                                     for _ in range(4)]), 4)
    model.generation_config = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    save_pretrained(model, out, copies={name: bundled / name for name in ("tokenizer.model", "tokenizer_config.json")},
                    text_files={"training_log.json": json.dumps(record) + "\n"})
    return record


def _progress(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="step", file=sys.stderr, leave=False)
