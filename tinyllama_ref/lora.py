r"""LoRA adapters: low-rank updates of frozen linear weights, trained, saved and read in PEFT's format.

**The layer.** A target linear $W \in \mathbb{R}^{o \times i}$ (rows are outputs, as in
`nn.Linear`) gets two small matrices $A \in \mathbb{R}^{r \times i}$ and $B \in \mathbb{R}^{o \times r}$,
$r \ll \min(o, i)$, and a scale $s$:

$$ y = x W^\top + s\,(x A^\top) B^\top = x\,(W + s\,BA)^\top = x\,W'^\top. $$

PEFT's scale is $s = \alpha / r$ (`lora_alpha / r`), or $\alpha / \sqrt{r}$ with `use_rslora`. PEFT
draws $A$ by `kaiming_uniform_(a=sqrt(5))`, which is $\mathcal{U}(-1/\sqrt{i},\ 1/\sqrt{i})$ (gain
$\sqrt{2/(1+a^2)} = \sqrt{1/3}$ times $\sqrt{3/i}$), and sets $B = 0$: the adapter starts as no change.
We draw $A$ from the same distribution with our own seeded NumPy generator.

**The gradient needs no new backward.** The loss $L$ sees $A$ and $B$ only through $W' = W + sBA$,
which is linear in each. With $G = \partial L / \partial W'$ (what `tl.value_and_grad` returns for
the weight of a model whose target weights are $W'$):

$$ \frac{\partial L}{\partial A_{kj}} = \sum_{p,q} G_{pq} \frac{\partial W'_{pq}}{\partial A_{kj}}
   = \sum_p G_{pj}\, s B_{pk} \;\Rightarrow\; \frac{\partial L}{\partial A} = s\,B^\top G \quad [r, i], $$
$$ \frac{\partial L}{\partial B_{pk}} = \sum_q G_{pq}\, s A_{kq} \;\Rightarrow\;
   \frac{\partial L}{\partial B} = s\,G A^\top \quad [o, r]. $$

So a step merges $W'$ (one $[o, r] \times [r, i]$ product per target), runs the model's own backward,
and maps each $G$ to $(\partial A, \partial B)$. The base weights are never updated: only $A$ and $B$
are in the optimizer. (At $B = 0$, $\partial A = 0$: the first step moves $B$ alone.)

**Files.** PEFT's, read and written by `formats/peft_lora.py`: `adapter_config.json` and
`adapter_model.safetensors`, keys `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`.
An adapter here is those keys without the prefix, {"model.layers.0.self_attn.q_proj.lora_A.weight": A, ...};
`tl.load(path, adapter=DIR)` merges $W \leftarrow W + sBA$ into the loaded tensors (dropout only acts
in training, so it is ignored).
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from .formats.checkpoint import check_output_dir, flatten, nest
from .formats.peft_lora import (CONFIG_NAME, LINEARS, PREFIX, WEIGHTS_NAME, LoraSpec, apply_adapter,  # noqa: F401
                                pairs, read_adapter, save_adapter)


def target_modules(weight_names: Iterable[str], targets: Iterable[str]) -> list[str]:
    """The modules (dotted names without ".weight") whose last part is one of `targets`, in the given order.

    >>> target_modules(["model.layers.0.self_attn.q_proj.weight", "model.norm.weight"], ["q_proj"])
    ['model.layers.0.self_attn.q_proj']
    """
    targets = set(targets)
    return [n[:-len(".weight")] for n in weight_names
            if n.endswith(".weight") and n[:-len(".weight")].rsplit(".", 1)[-1] in targets]


def init_adapter(params: dict, spec: LoraSpec, seed: int = 0) -> dict:
    """A new adapter for the model's `params`: {"<module>.lora_A.weight": A [r, in], ".lora_B.weight": B [out, r]}.

    A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform_(a=sqrt(5))), B = 0; in the weights' dtype
    and array module. Drawn in module order from one NumPy generator: the same seed, the same adapter.
    """
    from .backend import xp_of

    rng = np.random.default_rng(seed)
    flat = flatten(params)
    adapter = {}
    for module in target_modules(flat, spec.target_modules):
        w = flat[module + ".weight"]
        xp, (out, inp) = xp_of(w), w.shape
        bound = 1.0 / math.sqrt(inp)
        adapter[f"{module}.lora_A.weight"] = xp.asarray(rng.uniform(-bound, bound, (spec.r, inp)).astype(w.dtype))
        adapter[f"{module}.lora_B.weight"] = xp.zeros((out, spec.r), dtype=w.dtype)
    return adapter


def merge(weights: dict, adapter: Mapping[str, object], scaling: float) -> dict:
    """`weights` ({dotted name: array}) with W' = W + s·B·A for every module of the adapter: new arrays
    (a memory-mapped W is never written); the others, and so a tied head, are the same objects."""
    out = dict(weights)
    for module, (a, b) in pairs(adapter).items():
        w = weights[module + ".weight"]
        out[module + ".weight"] = w + (scaling * (b @ a)).astype(w.dtype, copy=False)  # [o, r] @ [r, i]
    return out


def merged_params(params: dict, adapter: Mapping[str, object], scaling: float) -> dict:
    """The params tree with the adapter merged (see `merge`); `params` itself is left as it was."""
    return nest(merge(flatten(params), adapter, scaling))


def adapter_grads(grads: dict, adapter: Mapping[str, object], scaling: float) -> dict:
    """dL/dA = s·Bᵀ·G and dL/dB = s·G·Aᵀ, from G = dL/dW' in `grads` (the params-shaped tree); keyed as `adapter`."""
    flat = flatten(grads)
    out = {}
    for module, (a, b) in pairs(adapter).items():
        g = flat[module + ".weight"]  # [o, i]
        out[f"{module}.lora_A.weight"] = scaling * (b.T @ g)  # [r, o] @ [o, i] -> [r, i]
        out[f"{module}.lora_B.weight"] = scaling * (g @ a.T)  # [o, i] @ [i, r] -> [o, r]
    return out


def value_and_grad(model, adapter: Mapping[str, object], spec: LoraSpec, input_ids, labels, attention_mask=None):
    """(loss, grads of the adapter) for `model` with `adapter` merged; `model.params` is not changed."""
    from .backprop import value_and_grad as model_value_and_grad

    merged = dataclasses.replace(model, params=merged_params(model.params, adapter, spec.scaling))
    loss, grads = model_value_and_grad(merged, input_ids, labels, attention_mask=attention_mask)
    return loss, adapter_grads(grads, adapter, spec.scaling)


# -- training --------------------------------------------------------------------------------------

def windows(ids, seq_len: int, batch_size: int, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches (input_ids, labels) of `batch_size` windows of `seq_len` tokens, drawn uniformly from
    `ids` by a seeded generator; labels are the inputs (the loss shifts them by one)."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < max(seq_len, 2):
        raise ValueError(f"the text has {len(ids)} tokens, fewer than a window of seq_len={seq_len} "
                         f"(give a longer text or a smaller seq_len)")
    rng = np.random.default_rng(seed)
    offsets = np.arange(seq_len)
    while True:
        starts = rng.integers(0, len(ids) - seq_len + 1, size=batch_size)
        batch = ids[starts[:, None] + offsets]  # [b, seq_len]
        yield batch, batch


def train_steps(value_and_grad_fn: Callable, optimizer, batches: Iterable, steps: int,
                schedule: Callable[[int], float] | None = None, max_grad_norm: float | None = None,
                progress: bool = True, log_every: int | None = None) -> list[float]:
    """Run `steps` optimizer steps; the losses, one per step.

    Each step takes (input_ids, labels) from `batches`, gets `loss, grads = value_and_grad_fn(input_ids,
    labels)` (grads shaped as the optimizer's params), clips them to `max_grad_norm` if given, sets
    `optimizer.lr = schedule(step)` if given, and calls `optimizer.step(grads)`. Full training passes
    `tl.value_and_grad` on the model and `AdamW(model.params)`; LoRA passes `lora.value_and_grad` and
    `AdamW(adapter)`. `progress` shows a bar on stderr with the loss; `log_every` writes a line
    "step N/steps: loss X" on stderr every that many steps.
    """
    from tqdm.auto import tqdm

    from .train import train_step

    losses: list[float] = []
    bar = tqdm(range(steps), desc="training", unit="step", file=sys.stderr, disable=not progress)
    batches = iter(batches)
    for step in bar:
        input_ids, labels = next(batches)
        lr = None if schedule is None else schedule(step)
        loss, _ = train_step(value_and_grad_fn, optimizer, input_ids, labels, lr, max_grad_norm)
        losses.append(loss)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if log_every and (step == 0 or (step + 1) % log_every == 0):
            bar.write(f"step {step + 1}/{steps}: loss {losses[-1]:.4f}", file=sys.stderr)
    return losses


# -- tinyllama-ref finetune ------------------------------------------------------------------------

def finetune(model_path: str | Path, data_file: str | Path, out_dir: str | Path, spec: LoraSpec, steps: int = 100,
             lr: float = 1e-3, seq_len: int = 128, batch_size: int = 4, seed: int = 0, merge: bool = False,
             force: bool = False, progress: bool = True) -> list[float]:
    """Train a LoRA adapter on a text file and write it; the losses, one per step.

    The text is tokenized once with the model's tokenizer; each step draws `batch_size` windows of
    `seq_len` tokens (`windows`) and takes one AdamW step on A and B (weight decay 0, as transformers'
    Trainer). Writes the adapter in PEFT's format to `out_dir`, or with `merge` the merged model as a
    checkpoint directory (config, weights, tokenizer) that `tl.load` and transformers read; it keeps the
    checkpoint's dtype (a bfloat16 checkpoint's merged weights are rounded to bfloat16).
    """
    from .model import load
    from .optim import AdamW
    from .tokenizer import load_tokenizer

    out = check_output_dir(out_dir, force)  # before any work
    data_file = Path(data_file)
    try:
        text = data_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{data_file}: not UTF-8 text ({e})") from None
    model, tokenizer = load(model_path), load_tokenizer(model_path)
    if seq_len > model.config.max_position_embeddings:
        raise ValueError(f"seq_len {seq_len} is longer than the model's context "
                         f"({model.config.max_position_embeddings})")
    ids = tokenizer.encode(text)
    adapter = init_adapter(model.params, spec, seed)
    optimizer = AdamW(adapter, lr=lr, weight_decay=0.0)
    losses = train_steps(lambda x, y: value_and_grad(model, adapter, spec, x, y), optimizer,
                         windows(ids, seq_len, batch_size, seed), steps, progress=progress,
                         log_every=max(1, steps // 10))
    if merge:
        model.params = merged_params(model.params, adapter, spec.scaling)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    else:
        save_adapter(out, adapter, spec, base_model_name_or_path=str(model_path), force=force)
    return losses
