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

**Files.** PEFT's: `adapter_config.json` (the `LoraConfig` fields PEFT 0.21 writes) and
`adapter_model.safetensors`, keys `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`
(PEFT strips its adapter name, "default", when saving). `read_adapter` checks a directory and
refuses, one line each, what merging cannot express (DoRA, biases, `modules_to_save`, ...);
`tl.load(path, adapter=DIR)` merges $W \leftarrow W + sBA$ into the loaded tensors (dropout only acts
in training, so it is ignored).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from .atomic import write_text_atomic
from .errors import CheckpointError
from .formats.checkpoint import check_output_dir, flatten, nest
from .formats.safetensors import read_safetensors, write_safetensors

CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel wraps the LoraModel, which wraps the transformers model
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>[AB])\.weight")

# What PEFT 0.21.2's LoraConfig.save_pretrained writes, its defaults; `peft_config` fills in ours.
PEFT_DEFAULTS = {
    "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "auto_mapping": None,
    "base_model_name_or_path": None, "bias": "none", "corda_config": None, "ensure_weight_tying": False,
    "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
    "init_lora_weights": True, "kasa_config": None, "layer_replication": None, "layers_pattern": None,
    "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 8, "lora_bias": False, "lora_dropout": 0.0,
    "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
    "monteclora_config": None, "peft_type": "LORA", "peft_version": "0.21.2", "qalora_group_size": 16, "r": 8,
    "rank_pattern": {}, "revision": None, "target_modules": ["q_proj", "v_proj"], "target_parameters": None,
    "task_type": "CAUSAL_LM", "trainable_token_indices": None, "use_bdlora": None, "use_dora": False,
    "use_qalora": False, "use_rslora": False, "velora_config": None,
}
# Fields whose non-default value changes the forward in a way a merged W + sBA cannot hold: refused.
_REFUSED = {
    "use_dora": "DoRA (use_dora) rescales each column by a learned magnitude",
    "lora_bias": "lora_bias adds a bias to lora_B",
    "modules_to_save": "modules_to_save stores whole trained modules beside the adapter",
    "fan_in_fan_out": "fan_in_fan_out stores weights transposed (GPT-2's Conv1D), not Llama's nn.Linear",
    "rank_pattern": "rank_pattern gives some modules another rank",
    "alpha_pattern": "alpha_pattern gives some modules another alpha",
    "target_parameters": "target_parameters adapts nn.Parameters, not linear layers",
    "trainable_token_indices": "trainable_token_indices trains embedding rows",
    "use_qalora": "QALoRA pools the inputs of the adapter",
    "alora_invocation_tokens": "aLoRA applies the adapter only after its invocation tokens",
    "layer_replication": "layer_replication duplicates layers",
    "use_bdlora": "BD-LoRA shares block-diagonal factors",
}


@dataclass(frozen=True)
class LoraSpec:
    """What defines an adapter's shape and scale: rank r, lora_alpha, target module names, use_rslora."""

    r: int = 8
    lora_alpha: float = 8
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    use_rslora: bool = False

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not isinstance(self.lora_alpha, (int, float, np.number)) or not math.isfinite(self.lora_alpha):
            raise ValueError(f"lora_alpha must be a finite number, got {self.lora_alpha!r}")
        bad = [t for t in self.target_modules if t not in LINEARS]
        if bad or not self.target_modules:
            raise ValueError(f"target modules {', '.join(bad) or '(none)'}: LoRA applies to the layers' linears "
                             f"{', '.join(LINEARS)}")

    @property
    def scaling(self) -> float:
        """s = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora (PEFT's LoraLayer.update_layer)."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


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


def pairs(adapter: Mapping[str, object]) -> dict[str, tuple]:
    """{module: (A, B)} from an adapter's flat names."""
    modules = dict.fromkeys(_KEY.fullmatch(k).group("module") for k in adapter)
    return {m: (adapter[f"{m}.lora_A.weight"], adapter[f"{m}.lora_B.weight"]) for m in modules}


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

    losses: list[float] = []
    bar = tqdm(range(steps), desc="training", unit="step", file=sys.stderr, disable=not progress)
    batches = iter(batches)
    for step in bar:
        input_ids, labels = next(batches)
        loss, grads = value_and_grad_fn(input_ids, labels)
        if max_grad_norm is not None:
            from .optim import clip_grad_norm

            clip_grad_norm(grads, max_grad_norm)
        if schedule is not None:
            optimizer.lr = schedule(step)
        optimizer.step(grads)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if log_every and (step == 0 or (step + 1) % log_every == 0):
            bar.write(f"step {step + 1}/{steps}: loss {losses[-1]:.4f}", file=sys.stderr)
    return losses


# -- PEFT's files ----------------------------------------------------------------------------------

def peft_config(spec: LoraSpec, base_model_name_or_path: str | None = None) -> dict:
    """adapter_config.json as PEFT 0.21 writes it for this spec (every field, PEFT's defaults elsewhere)."""
    alpha = int(spec.lora_alpha) if float(spec.lora_alpha).is_integer() else float(spec.lora_alpha)  # 8, not 8.0
    return {**PEFT_DEFAULTS, "r": int(spec.r), "lora_alpha": alpha, "use_rslora": spec.use_rslora,
            "target_modules": list(spec.target_modules), "base_model_name_or_path": base_model_name_or_path}


def save_adapter(out_dir: str | Path, adapter: Mapping[str, object], spec: LoraSpec,
                 base_model_name_or_path: str | None = None, force: bool = False) -> Path:
    """Write `adapter` in PEFT's format: adapter_model.safetensors (float32 or the adapter's dtype, PEFT's
    key names), then adapter_config.json; each file whole or not at all. A non-empty `out_dir` needs `force`."""
    from .backend import to_numpy

    out = check_output_dir(out_dir, force)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {PREFIX + k: to_numpy(v) for k, v in adapter.items()}
    write_safetensors(out / WEIGHTS_NAME, tensors, metadata={"format": "pt"})
    write_text_atomic(out / CONFIG_NAME, json.dumps(peft_config(spec, base_model_name_or_path), indent=2,
                                                    sort_keys=True))  # as PEFT: sorted, no final newline
    return out


def read_adapter(adapter_dir: str | Path) -> tuple[LoraSpec, dict]:
    """A PEFT LoRA directory -> (its spec, {"<module>.lora_A.weight": A, ...}), after checking the config's
    options and every key (a pair A and B per module, rank r). Raises CheckpointError naming what is wrong.

    The keys say which modules are adapted (PEFT saved those its `target_modules` matched); the spec's
    `target_modules` are their last names.
    """
    d = Path(adapter_dir).expanduser()
    config_path, weights_path = d / CONFIG_NAME, d / WEIGHTS_NAME
    if not d.is_dir():
        raise CheckpointError(f"adapter not found: {d} is not a directory")
    if not config_path.is_file():
        raise CheckpointError(f"{d}: no {CONFIG_NAME} (not a PEFT adapter directory)")
    if not weights_path.is_file():
        bin_note = " (PyTorch adapter_model.bin is not read: save with safe_serialization=True)" if (
            d / "adapter_model.bin").is_file() else ""
        raise CheckpointError(f"{d}: no {WEIGHTS_NAME}{bin_note}")
    config = read_config(config_path)
    adapter = {}
    for key, arr in read_safetensors(weights_path).items():
        m = _KEY.fullmatch(key.removeprefix(PREFIX))
        if not key.startswith(PREFIX) or m is None:
            raise CheckpointError(f"{weights_path}: tensor {key!r} is not a LoRA weight "
                                  f"({PREFIX}<module>.lora_A.weight or .lora_B.weight)")
        adapter[key.removeprefix(PREFIX)] = arr
    if not adapter:
        raise CheckpointError(f"{weights_path}: holds no LoRA weights")
    modules = list(dict.fromkeys(_KEY.fullmatch(k).group("module") for k in adapter))
    spec = spec_from_config(config, [m.rsplit(".", 1)[-1] for m in modules], str(config_path))
    for module in modules:
        a, b = (adapter.get(f"{module}.lora_{p}.weight") for p in "AB")
        for part, arr in (("A", a), ("B", b)):
            if arr is None:
                raise CheckpointError(f"{weights_path}: {PREFIX}{module} has no lora_{part}.weight")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != spec.r or b.shape[1] != spec.r:
            raise CheckpointError(f"{weights_path}: {PREFIX}{module}: lora_A {tuple(a.shape)} and lora_B "
                                  f"{tuple(b.shape)} are not [r, in] and [out, r] with r = {spec.r} "
                                  f"(adapter_config.json's r)")
    return spec, adapter


def read_config(path: Path) -> dict:
    """adapter_config.json as a dict (a clear error for a file that is not a JSON object)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return config


def spec_from_config(config: dict, adapted: list[str], source: str) -> LoraSpec:
    """The LoraSpec of a PEFT config whose weights adapt the modules named `adapted` (last names), refusing
    (one line each) what a merged W + sBA cannot hold and target modules a Llama model does not have."""
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{source}: peft_type is {config.get('peft_type')!r}; only LoRA adapters "
                              f"(peft_type \"LORA\") are supported")
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{source}: bias is {config['bias']!r}: adapters that train biases are not "
                              f"supported (only bias \"none\")")
    for name, why in _REFUSED.items():
        if config.get(name) not in (None, False, {}, []):
            raise CheckpointError(f"{source}: {name} = {config[name]!r} is not supported: {why}")
    targets = config.get("target_modules")
    if isinstance(targets, list):  # a string is PEFT's regular expression (or "all-linear"): the keys decide
        bad = [t for t in targets if not isinstance(t, str) or t.rsplit(".", 1)[-1] not in LINEARS]
        if bad:
            raise CheckpointError(f"{source}: target module(s) {', '.join(map(repr, bad))}: a Llama model has no "
                                  f"such linear layer for LoRA (it applies to {', '.join(LINEARS)})")
    try:
        return LoraSpec(r=config.get("r"), lora_alpha=config.get("lora_alpha"),
                        target_modules=tuple(dict.fromkeys(adapted)), use_rslora=bool(config.get("use_rslora")))
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def apply_adapter(tensors: Mapping[str, np.ndarray], adapter_dir: str | Path, dtype: str = "float32") -> dict:
    """HF-named checkpoint tensors with a PEFT LoRA adapter merged in (what `tl.load(..., adapter=DIR)` does).

    Each target W becomes W + s·B·A, computed in float32 (float64 when `dtype` is float64) as a new array;
    a module the checkpoint lacks, or a shape that does not fit its weight, is refused naming the key.
    """
    spec, adapter = read_adapter(adapter_dir)
    weights_path = Path(adapter_dir).expanduser() / WEIGHTS_NAME
    # A base model's checkpoint (LlamaModel) names "layers.0...", a causal LM's "model.layers.0...".
    canonical = {(n if n.startswith(("model.", "lm_head.", "score.")) else "model." + n): n for n in tensors}
    work = np.float64 if dtype == "float64" else np.float32
    out = dict(tensors)
    for module, (a, b) in pairs(adapter).items():
        key = f"{PREFIX}{module}"
        name = canonical.get(module + ".weight") or canonical.get("model." + module + ".weight")
        if name is None:
            raise CheckpointError(f"{weights_path}: {key} adapts a module this model does not have")
        w = tensors[name]
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise CheckpointError(f"{weights_path}: {key}: lora_B @ lora_A is {(b.shape[0], a.shape[1])} but the "
                                  f"model's {name} is {tuple(w.shape)}")
        out[name] = np.asarray(w, work) + spec.scaling * (np.asarray(b, work) @ np.asarray(a, work))  # W + s·B·A
    return out


# -- tinyllama-ref finetune ------------------------------------------------------------------------

def finetune(model_path: str | Path, data_file: str | Path, out_dir: str | Path, spec: LoraSpec, steps: int = 100,
             lr: float = 1e-3, seq_len: int = 128, batch_size: int = 4, seed: int = 0, merge: bool = False,
             force: bool = False, progress: bool = True) -> list[float]:
    """Train a LoRA adapter on a text file and write it; the losses, one per step.

    The text is tokenized once with the model's tokenizer; each step draws `batch_size` windows of
    `seq_len` tokens (`windows`) and takes one AdamW step on A and B (weight decay 0, as transformers'
    Trainer). Writes the adapter in PEFT's format to `out_dir`, or with `merge` the merged model as a
    checkpoint directory (config, weights, tokenizer) that `tl.load` and transformers read.
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
