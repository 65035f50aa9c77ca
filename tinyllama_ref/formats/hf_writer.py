"""Writing a Hugging Face checkpoint directory: config.json, safetensors shards, their index.

`save_pretrained` writes what transformers' `PreTrainedModel.save_pretrained` (5.x) writes, so that
`AutoModelForCausalLM.from_pretrained(dir)` and `tinyllama_ref.load(dir)` both read it back:

- `model.safetensors`, or, past `max_shard_size`, `model-00001-of-0000N.safetensors` ... and
  `model.safetensors.index.json` ({"metadata": {"total_parameters", "total_size"}, "weight_map"});
  tensors are taken in transformers' `state_dict()` order and cut into shards as
  `huggingface_hub.split_torch_state_dict_into_shards` cuts them;
- tensor names exactly transformers' (a tied head is saved once, as `model.embed_tokens.weight`;
  a `LlamaModel` has no "model." prefix);
- `config.json` with transformers' field names, and `generation_config.json` when the model has one.

One writer serves both `save_pretrained` and `tinyllama-ref convert` (GGUF -> HF directory):
`write_checkpoint_dir`. Every file is written into a temporary directory beside the target and
synced first; only then does anything in the target change. A new (or empty) directory then
appears whole in one rename. In an existing directory each file is replaced whole by a rename
(other files, such as a tokenizer's, are left alone; weight files of an earlier save that this one
does not replace are removed): a crash during those renames can leave new shards beside the old
index, never half a file.

A kill (not an exception: that removes it) leaves the temporary directory, `.NAME.partial-PID-*`, or an
old directory moved aside, `.NAME.old-PID-*`, beside the target: up to a whole checkpoint. The next
write to the same target removes those whose process PID no longer runs, and says so in a warning
(logger `tinyllama_ref.formats.hf_writer`).

Readers are not isolated from a write into an existing directory: a process that loads it while
another saves into it can read one save's config.json and the other's weights. A single rename
cannot replace a non-empty directory (rename(2) refuses, and the exchange of two directories is a
Linux-only call), and even then a reader opens config.json and the weights one after the other, by
name, so it could straddle the rename. To publish a checkpoint to readers that may be loading,
save into a new directory and point them at it (a symlink replaced with `os.replace` switches in one step).

The dtype kept: a checkpoint loaded from float16 or bfloat16 (its config's `torch_dtype`) is
saved in that dtype even though we hold it as float32 (exact: the values came from it); otherwise
the dtype held (float32, or the `dtype=` it was loaded with) is saved. `dtype` in config.json says
which.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..backend import to_numpy
from ..config import LlamaConfig
from .checkpoint import check_output_dir, flatten
from ..atomic import write_text_atomic
from .safetensors import bf16_to_f32, f32_to_bf16, write_safetensors

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SIZE_UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3}  # huggingface_hub's: decimal units
_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
NARROW_DTYPES = ("float16", "bfloat16")
log = logging.getLogger(__name__)


# -- sizes and shards ----------------------------------------------------------------------------

def parse_size_to_int(size: int | str) -> int:
    """A shard size in bytes: an int as is, or digits and a unit ("5GB", "200MB", "1.5KB"), as huggingface_hub.

    >>> parse_size_to_int("200MB"), parse_size_to_int(1000)
    (200000000, 1000)
    """
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return int(size)
    if not isinstance(size, str):
        raise ValueError(f"max_shard_size must be an integer or a string like '5GB', got {size!r}")
    text = size.strip()
    unit = text[-2:].upper()
    if unit not in SIZE_UNITS:
        raise ValueError(f"max_shard_size {size!r}: unit {unit!r} not supported; supported units are TB, GB, MB, KB")
    try:
        value = float(text[:-2].strip())
    except ValueError:
        raise ValueError(f"max_shard_size {size!r}: could not parse the number before the unit") from None
    return int(value * SIZE_UNITS[unit])


def shard_files(sizes: Mapping[str, int], max_shard_size: int | str) -> dict[str, list[str]]:
    """{file name: tensor names}: tensors taken in order, a new shard begun when the next one would
    pass `max_shard_size`, a tensor larger than it alone in its shard (huggingface_hub's rule).

    >>> shard_files({"a": 6, "b": 6, "c": 2}, 10)
    {'model-00001-of-00002.safetensors': ['a'], 'model-00002-of-00002.safetensors': ['b', 'c']}
    """
    limit = parse_size_to_int(max_shard_size)
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for name, size in sizes.items():
        if size > limit:
            shards.append([name])
            continue
        if current_size + size > limit:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current:
        shards.append(current)
    if len(shards) <= 1:
        return {WEIGHTS_NAME: shards[0] if shards else []}
    n = len(shards)
    return {f"model-{i + 1:05d}-of-{n:05d}.safetensors": names for i, names in enumerate(shards)}


# -- what is saved ------------------------------------------------------------------------------

def storage_dtype(config: LlamaConfig, arr) -> str:
    """The dtype a tensor is saved in: the checkpoint's float16/bfloat16 when we hold it wider, else its own."""
    held = np.dtype(arr.dtype)
    if config.torch_dtype in NARROW_DTYPES and held.kind == "f" and held.itemsize > 2:
        return config.torch_dtype
    return held.name


def round_to_storage(rows: np.ndarray, config: LlamaConfig) -> np.ndarray:
    """Host rows rounded to the checkpoint's float16 or bfloat16 (as float32), so that saving them is exact."""
    if config.torch_dtype == "bfloat16":
        return bf16_to_f32(f32_to_bf16(rows))
    if config.torch_dtype == "float16":
        return np.asarray(rows).astype(np.float16).astype(np.float32)
    return rows


_LAYER = re.compile(r"(?:model\.)?layers\.(\d+)\.(.*)")
_LAYER_PARTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")
_TOP = ("embed_tokens", "embed_layer_norm", "layers", "norm")


def _state_dict_position(name: str) -> tuple:
    """Where `name` comes in transformers' `state_dict()`: modules in the order their classes create them."""
    layer = _LAYER.match(name)
    if layer:
        part, leaf = layer.group(2).rpartition(".")[::2]
        return (_TOP.index("layers"), int(layer.group(1)), _LAYER_PARTS.index(part), leaf != "weight")
    top = name.removeprefix("model.").split(".")[0]
    if top in _TOP:
        return (_TOP.index(top), 0, 0, not name.endswith("weight"))
    return (len(_TOP), 0, 0, not name.endswith("weight"))  # lm_head, score


def hf_state_dict(params: dict, config: LlamaConfig) -> dict:
    """{transformers name: array} in `state_dict()` order; a tied head once (as the embedding), and a
    `LlamaModel`'s names without the "model." prefix, as transformers saves them."""
    flat = flatten(params)
    if config.head == "causal_lm" and config.lm_head_is_embedding:
        flat.pop("lm_head.weight", None)
    if config.head == "base":
        flat = {k.removeprefix("model."): v for k, v in flat.items()}
    return {k: flat[k] for k in sorted(flat, key=_state_dict_position)}


def hf_config_dict(config: LlamaConfig, dtype: str) -> dict:
    """The config.json transformers writes (its field names), with `dtype` the dtype saved.

    Llama keeps `rope_theta`/`rope_scaling` beside transformers 5.x's `rope_parameters` (older
    readers need them); a classifier writes `id2label`/`label2id` as transformers does; Open-Llama
    (a transformers 4.x model) spells the dtype `torch_dtype`.
    """
    d = config.to_dict()
    d.pop("torch_dtype", None)
    d["torch_dtype" if config.is_open_llama else "dtype"] = dtype
    num_labels = d.pop("num_labels")
    if config.head == "sequence_classification":
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    return d


def _json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"  # as transformers' to_json_string


def save_pretrained(model, save_directory: str | Path, max_shard_size: int | str = "50GB",
                    safe_serialization: bool = True, *, text_files=None, copies=None) -> Path:
    """Write `model` (a `tinyllama_ref.Model`) as a Hugging Face checkpoint directory; returns its path.

    `text_files` ({name: text}) and `copies` ({name: source path}), such as a tokenizer's files, are written
    in the same all-or-nothing step (`write_checkpoint_dir`).

    `max_shard_size`: transformers 5.x's default "50GB" (4.x's was "5GB"); an int is bytes, a string
    digits and a unit (decimal: "200MB" is 200 * 10**6 bytes). Only safetensors is written:
    `safe_serialization=False` (PyTorch pickles) is refused.

    Not isolated from readers: a process loading `save_directory` while this saves into it may read one
    save's config with the other's weights; save into a new directory for them (see the module docstring).
    """
    if not safe_serialization:
        raise ValueError("safe_serialization=False (a PyTorch .bin checkpoint) is not supported: only "
                         "safetensors is written")
    if getattr(model, "quantize", None):
        raise ValueError(f"this model holds {model.quantize} weights (loaded with quantize={model.quantize!r}); "
                         f"save_pretrained writes float checkpoints only: load it without quantize= to save it")
    config = model.config
    tensors, bf16 = {}, set()
    for name, arr in hf_state_dict(model.params, config).items():
        dtype = storage_dtype(config, arr)
        host = to_numpy(arr)  # one copy from the device per tensor
        if dtype == "bfloat16":
            bf16.add(name)  # write_safetensors rounds float32 -> bfloat16 (exact: the values came from it)
        elif host.dtype != np.dtype(dtype):
            host = host.astype(dtype)
        tensors[name] = host
    first = next(iter(tensors))
    files = {"config.json": _json(hf_config_dict(config, storage_dtype(config, tensors[first])))}
    if model.generation_config:
        files["generation_config.json"] = _json(model.generation_config)
    return write_checkpoint_dir(save_directory, {**files, **(text_files or {})}, tensors, bf16=bf16,
                                max_shard_size=max_shard_size, total_parameters=model.num_parameters(), copies=copies)


# -- the directory write -------------------------------------------------------------------------

def write_checkpoint_dir(out_dir: str | Path, text_files: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                         bf16=(), max_shard_size: int | str = "50GB", total_parameters: int | None = None,
                         replace_dir: bool = False, copies: Mapping[str, Path] | None = None) -> Path:
    """Write text files (a str as it is, anything else as JSON) and tensors (host arrays; names in
    `bf16` stored as bfloat16) as a checkpoint directory: one safetensors file, or shards and their
    index past `max_shard_size`; and the files of `copies` ({name: source path}) copied as they are.

    `total_parameters` (the index's, when sharded) defaults to the tensors' element count.
    All is written into a temporary directory beside `out_dir` first (see the module docstring for
    what a failure leaves). `replace_dir`: the finished directory takes the place of `out_dir` whole,
    whatever it held; otherwise an existing directory keeps the files this write does not name.
    """
    out = check_output_dir(out_dir, force=True)  # a file is refused; an existing directory is written into
    bf16 = set(bf16)
    sizes = {name: math.prod(arr.shape) * (2 if name in bf16 else np.dtype(arr.dtype).itemsize)
             for name, arr in tensors.items()}
    shards = shard_files(sizes, max_shard_size)  # a bad size is refused before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-{os.getpid()}-"))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # as os.makedirs would create it, not mkdtemp's 0o700
        for name, text in text_files.items():
            text = text if isinstance(text, str) else json.dumps(text, indent=2, ensure_ascii=False) + "\n"
            write_text_atomic(staging / name, text)
        for name, src in (copies or {}).items():
            shutil.copyfile(src, staging / name)
        for file_name, names in shards.items():
            # "format": "pt" is what transformers checks before it will load the file
            write_safetensors(staging / file_name, {n: tensors[n] for n in names}, metadata={"format": "pt"},
                              bf16=bf16.intersection(names))
        if len(shards) > 1:
            if total_parameters is None:
                total_parameters = sum(math.prod(arr.shape) for arr in tensors.values())
            index = {"metadata": {"total_parameters": total_parameters, "total_size": sum(sizes.values())},
                     "weight_map": {n: f for f, names in shards.items() for n in names}}
            write_text_atomic(staging / INDEX_NAME, _json(index))
        if replace_dir or not out.exists() or not any(out.iterdir()):
            _publish_dir(staging, out)
        else:
            _publish_files(staging, out, weight_files=list(shards) + ([INDEX_NAME] if len(shards) > 1 else []))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def remove_stale_staging(out: Path) -> None:
    """Remove what killed writes to `out` left beside it: `.NAME.partial-PID-*` and `.NAME.old-PID-*`
    directories whose process PID is not running (on this machine). Another live write's are kept."""
    if os.name != "posix":  # os.kill(pid, 0) tests a process only on POSIX (on Windows it would end it)
        return
    prefix = f".{out.name}."
    for p in out.parent.glob(glob.escape(prefix) + "*"):
        owner = re.fullmatch(r"(?:partial|old)-(\d+)-\w+", p.name[len(prefix):])
        if owner and p.is_dir() and not _running(int(owner.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            log.warning("removed %s, left by an interrupted write to %s (process %s, no longer running)",
                        p, out, owner.group(1))


def _running(pid: int) -> bool:
    """Whether process `pid` exists: signal 0 sends nothing, it only checks. In doubt (another user's
    process, a number too large for a pid), it counts as running, so its directory is kept."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_dir(staging: Path, out: Path) -> None:
    """Rename the finished `staging` onto `out`; an old `out` is moved aside first, then removed."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{os.getpid()}-")) / out.name
        out.replace(old)
    staging.replace(out)
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


def _publish_files(staging: Path, out: Path, weight_files: list[str]) -> None:
    """Move each finished file of `staging` into the existing `out` (weights first, the index and
    configs after), then remove the weight files of an earlier save that this one did not replace."""
    names = weight_files + sorted(p.name for p in staging.iterdir() if p.name not in weight_files)
    for name in names:
        os.replace(staging / name, out / name)
    staging.rmdir()
    for p in out.iterdir():
        stale = p.name in (WEIGHTS_NAME, INDEX_NAME) or _SHARD_NAME.fullmatch(p.name)
        if stale and p.name not in weight_files and p.is_file():
            p.unlink()
