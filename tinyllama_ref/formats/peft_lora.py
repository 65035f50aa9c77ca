"""PEFT's LoRA adapter directory: adapter_config.json and adapter_model.safetensors, read, checked and written.

What PEFT 0.21 writes with `PeftModel.save_pretrained`: the `LoraConfig` fields (`PEFT_DEFAULTS`, every one,
sorted, as PEFT's JSON) and the weights under `base_model.model.<module>.lora_A.weight` [r, in] and
`.lora_B.weight` [out, r] (PEFT strips its adapter name, "default", when saving). `read_adapter` refuses,
one line each, the options a merged W + s·B·A cannot express; `apply_adapter` merges an adapter into a
checkpoint's tensors as `tl.load(path, adapter=DIR)` loads them. The math, and training, are in `lora.py`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..atomic import write_text_atomic
from ..backend import to_numpy
from ..errors import CheckpointError
from .checkpoint import check_output_dir
from .safetensors import read_safetensors, write_safetensors

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


def pairs(adapter: Mapping[str, object]) -> dict[str, tuple]:
    """{module: (A, B)} from an adapter's flat names."""
    modules = dict.fromkeys(_KEY.fullmatch(k).group("module") for k in adapter)
    return {m: (adapter[f"{m}.lora_A.weight"], adapter[f"{m}.lora_B.weight"]) for m in modules}


def peft_config(spec: LoraSpec, base_model_name_or_path: str | None = None) -> dict:
    """adapter_config.json as PEFT 0.21 writes it for this spec (every field, PEFT's defaults elsewhere)."""
    alpha = int(spec.lora_alpha) if float(spec.lora_alpha).is_integer() else float(spec.lora_alpha)  # 8, not 8.0
    return {**PEFT_DEFAULTS, "r": int(spec.r), "lora_alpha": alpha, "use_rslora": spec.use_rslora,
            "target_modules": list(spec.target_modules), "base_model_name_or_path": base_model_name_or_path}


def save_adapter(out_dir: str | Path, adapter: Mapping[str, object], spec: LoraSpec,
                 base_model_name_or_path: str | None = None, force: bool = False) -> Path:
    """Write `adapter` in PEFT's format: adapter_model.safetensors (float32 or the adapter's dtype, PEFT's
    key names), then adapter_config.json; each file whole or not at all. A non-empty `out_dir` needs `force`."""
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


