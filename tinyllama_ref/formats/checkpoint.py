"""Checkpoint directories and the parameter tree: which tensors a config needs, checked and nested.

A checkpoint directory holds one `model.safetensors`, or shards named by
`model.safetensors.index.json` (each file is read by `tinyllama_ref.formats.safetensors`).

The parameter tree mirrors the checkpoint's names: "model.layers.0.self_attn.q_proj.weight" is
`params["model"]["layers"][0]["self_attn"]["q_proj"]["weight"]`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..config import LlamaConfig
from ..errors import CheckpointError
from .safetensors import read_safetensors

COMPUTE_DTYPES = ("float32", "float16", "float64")


def checkpoint_files(ckpt_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint dir: one `model.safetensors`, or the shards its index names."""
    index = ckpt_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError, IndexError, RecursionError) as e:  # ValueError: not UTF-8/JSON
            raise CheckpointError(f"{index}: not a valid shard index ({e!r})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: field 'weight_map' must map tensor names to file names, "
                                  f"got {str(weight_map)[:80]}")
        files = [_inside(ckpt_dir, f, index) for f in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: names shard files that are missing: {', '.join(missing)}")
        return files
    single = ckpt_dir / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(ckpt_dir.glob("*.safetensors"))
    if others:
        return others
    raise CheckpointError(f"{ckpt_dir}: no model.safetensors or model.safetensors.index.json found "
                          f"(PyTorch .bin checkpoints are not supported: convert them with transformers' "
                          f"save_pretrained(..., safe_serialization=True))")


def _inside(ckpt_dir: Path, name: str, index: Path) -> Path:
    """A shard named by the index, which must lie in the checkpoint directory (no absolute path, no ..)."""
    path = Path(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\0" in name:
        raise CheckpointError(f"{index}: weight_map names {name!r}, which is not a file in {ckpt_dir}")
    return ckpt_dir / path


@dataclass(frozen=True)
class Slicing:
    """Which slice of each tensor a reader keeps: one rank's, of `size` ranks (`distributed.rank_slicing`).

    `index(name, shape)` is the NumPy index of the slice (`()`: the whole tensor); `check(config_dict)`
    refuses a model the ranks cannot share, before any tensor is read. Meta's shard files are already
    cut this way: rank r reads `consolidated.0r.pth` alone.
    """

    rank: int
    size: int
    index: Callable
    check: Callable = lambda config: None

    def take(self, name: str, arr: np.ndarray) -> np.ndarray:
        """This rank's slice of `arr`, copied out of the file: the rest of a memory map is never read, and
        once every slice is copied the map is closed (its pages no longer count in this process's memory)."""
        return np.array(arr[self.index(name, arr.shape)])

    def shape(self, name: str, shape: tuple) -> tuple:
        """The shape of this rank's slice of a tensor of `shape`."""
        index = self.index(name, shape)
        index += (slice(None),) * (len(shape) - len(index))
        return tuple(len(range(*s.indices(n))) for s, n in zip(index, shape))


def read_checkpoint_tensors(ckpt_dir: str | Path, slicing: Slicing | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a (possibly sharded) safetensors checkpoint directory, by name (`slicing`: a rank's slices)."""
    tensors: dict[str, np.ndarray] = {}
    for f in checkpoint_files(Path(ckpt_dir)):
        for name, arr in read_safetensors(f, slicing).items():
            if name in tensors:
                raise CheckpointError(f"{f}: tensor {name!r} appears in more than one shard")
            tensors[name] = arr
    return tensors


# -- writing a checkpoint directory ---------------------------------------------------------

def check_output_dir(out_dir: str | Path, force: bool = False) -> Path:
    """Refuse an output that is a file, or a non-empty directory unless `force`; before any work is done."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty: choose a new directory, or pass --force to replace it")
    return out


# -- the parameter tree --------------------------------------------------------------------

def expected_shapes(config: LlamaConfig) -> tuple[dict[str, tuple], set[str]]:
    """Every tensor name the checkpoint must hold, with its shape; and names that may be absent (tied heads)."""
    c = config
    D, F, V, d = c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim
    q_out, kv_out = c.num_attention_heads * d, c.num_key_value_heads * d
    shapes: dict[str, tuple] = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if c.is_open_llama and c.use_stable_embedding:
        shapes["model.embed_layer_norm.weight"] = (D,)
        shapes["model.embed_layer_norm.bias"] = (D,)
    for i in range(c.num_hidden_layers):
        pre = f"model.layers.{i}."
        shapes[pre + "input_layernorm.weight"] = (D,)
        shapes[pre + "post_attention_layernorm.weight"] = (D,)
        for proj, shape in (("q_proj", (q_out, D)), ("k_proj", (kv_out, D)), ("v_proj", (kv_out, D)),
                            ("o_proj", (D, q_out))):
            shapes[f"{pre}self_attn.{proj}.weight"] = shape
            if c.attention_bias:
                shapes[f"{pre}self_attn.{proj}.bias"] = (shape[0],)
        for proj, shape in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
            shapes[f"{pre}mlp.{proj}.weight"] = shape
            if c.mlp_bias:
                shapes[f"{pre}mlp.{proj}.bias"] = (shape[0],)
    optional: set[str] = set()
    if c.head == "sequence_classification":
        shapes["score.weight"] = (c.num_labels, D)
    elif c.head == "causal_lm":
        shapes["lm_head.weight"] = (V, D)
        if c.lm_head_is_embedding:
            optional.add("lm_head.weight")  # tied: the file may or may not repeat it; we use the embedding
    return shapes, optional


# Buffers that older transformers versions saved but that are recomputed, never learned.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"; [] -> "none"."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs) or "none"


def check_tensors(tensors: Mapping[str, np.ndarray], config: LlamaConfig, source: str = "checkpoint",
                  slicing: Slicing | None = None) -> dict:
    """Check names and shapes against the config; return the tensors under canonical names.

    A base-model checkpoint (LlamaModel) stores names without the "model." prefix; it is added here.
    With `slicing`, the shapes are those of one rank's slices.
    """
    if tensors and not any(k.startswith("model.") for k in tensors):
        tensors = {("model." + k if not k.startswith(("lm_head.", "score.")) else k): v for k, v in tensors.items()}
    present = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIXES)}
    layers = {int(m.group(1)) for m in map(_LAYER.match, present) if m}
    first_absent = next(i for i in range(len(layers) + 1) if i not in layers)
    if first_absent < config.num_hidden_layers:  # before listing every name of a config that may be huge
        raise CheckpointError(f"{source}: missing tensor(s) of layer {first_absent} (the config's "
                              f"num_hidden_layers is {config.num_hidden_layers}; the checkpoint holds layers "
                              f"{_ranges(sorted(layers))})")
    shapes, optional = expected_shapes(config)
    if slicing is not None:
        shapes = {k: slicing.shape(k, shape) for k, shape in shapes.items()}
    missing = [k for k in shapes if k not in present and k not in optional]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"{source}: missing tensor(s) {', '.join(missing[:5])}{more}")
    unexpected = [k for k in present if k not in shapes]
    if unexpected:
        more = f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
        raise CheckpointError(f"{source}: unexpected tensor(s) {', '.join(unexpected[:5])}{more} "
                              f"for a {config.model_type} {config.head} model with this config")
    for k, v in present.items():
        if tuple(v.shape) != shapes[k]:
            raise CheckpointError(f"{source}: tensor {k!r} has shape {tuple(v.shape)}, "
                                  f"but the config needs {shapes[k]}")
    return present


def nest(flat: Mapping[str, object]) -> dict:
    """Dotted names -> nested dicts, numeric parts becoming list positions.

    >>> nest({"model.layers.0.mlp.up_proj.weight": 1, "model.norm.weight": 2})
    {'model': {'layers': [{'mlp': {'up_proj': {'weight': 1}}}], 'norm': {'weight': 2}}}
    """
    root: dict = {}
    for name, value in flat.items():
        node = root
        parts = name.split(".")
        for part, nxt in zip(parts[:-1], parts[1:]):
            key = int(part) if part.isdigit() else part
            if isinstance(node, list):
                while len(node) <= key:
                    node.append({})
                node = node[key]
            else:
                node = node.setdefault(key, [] if nxt.isdigit() else {})
        node[parts[-1]] = value
    return root


def flatten(tree, prefix: str = "") -> dict:
    """The inverse of `nest`: nested dicts/lists -> {dotted name: array}."""
    items = enumerate(tree) if isinstance(tree, list) else tree.items()
    out = {}
    for k, v in items:
        name = f"{prefix}{k}"
        if isinstance(v, (dict, list)):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def to_compute(arr: np.ndarray, dtype: str, xp):
    """One tensor in the compute dtype on the backend; float32 NumPy tensors stay memory-mapped."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {', '.join(COMPUTE_DTYPES)}")
    if xp is np:
        return arr if arr.dtype == np.dtype(dtype) else arr.astype(dtype)
    from ..backend import is_cupy_array

    if not is_cupy_array(arr):
        arr = xp.asarray(np.asarray(arr))  # one host->device copy in the file's dtype
    return arr.astype(dtype, copy=False)  # converted on the device


def build_params(tensors: Mapping[str, np.ndarray], config: LlamaConfig, dtype: str = "float32", xp=np,
                 source: str = "checkpoint", progress=None, slicing: Slicing | None = None) -> dict:
    """The nested parameter tree in the compute dtype, after checking every name and shape (a rank's slices
    with `slicing`)."""
    checked = check_tensors(tensors, config, source, slicing)
    items = checked.items() if progress is None else progress(checked.items(), total=len(checked))
    params = nest({k: to_compute(v, dtype, xp) for k, v in items})
    if config.head == "causal_lm" and config.lm_head_is_embedding:
        params["lm_head"] = {"weight": params["model"]["embed_tokens"]["weight"]}  # tied: one array, two names
    return params


def random_tensors(config: LlamaConfig, seed: int = 0, std: float = 0.02, dtype=np.float32, xp=np) -> dict:
    """Random weights with every name and shape the config needs (norm weights near 1), for tests and benchmarks.

    `xp=cupy` draws them on the GPU (a 7B-shaped model never passes through host memory).
    """
    rng = xp.random.default_rng(seed)
    shapes, optional = expected_shapes(config)
    out = {}
    for name, shape in shapes.items():
        if name in optional:
            continue
        noise = rng.standard_normal(shape, dtype=np.float32)  # float32 draws: half the memory of float64
        arr = 1.0 + 0.1 * noise if name.endswith("norm.weight") else std * noise
        out[name] = arr.astype(dtype)
    return out
