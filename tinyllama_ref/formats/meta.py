r"""Meta's original checkpoints (LLaMA-1, Llama-2, Code Llama) read into Hugging Face names and layouts.

Meta released its weights as a directory:

    params.json           {"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256,
                           "norm_eps": 1e-05, "vocab_size": -1}   (+ n_kv_heads, ffn_dim_multiplier, rope_theta)
    consolidated.00.pth   one model-parallel shard per GPU Meta ran it on (13B: 2, 70B: 8),
    consolidated.01.pth   each a torch.save'd state dict, read by `torch_pickle` without torch
    tokenizer.model       SentencePiece

Reading one for our model is what transformers' `convert_llama_weights_to_hf.py` does:

1. params.json -> an HF `config.json` dict  (`dim` -> `hidden_size`, the MLP width computed as
   Meta's FeedForward computes it, vocab_size -1 -> the tokenizer's size);
2. shards      -> whole tensors            (each shard holds a slice of every matrix, cut the way
   fairscale's parallel layers cut it: see SPLIT_AXIS);
3. Meta names  -> HF names                 (`layers.0.attention.wq.weight` -> `model.layers.0.self_attn.q_proj.weight`);
4. q/k rows    -> HF's RoPE layout         (Meta's RoPE is interleaved, HF's is rotate-half:
   the permutation `qk_permutation.unpermute_qk` applies, the same for llama.cpp's files).

`tinyllama_ref.convert` writes the result as an ordinary HF checkpoint directory (safetensors,
config, tokenizer.model), which transformers loads.

    >>> config, tensors, bf16 = read_meta_checkpoint("llama-2-13b")  # doctest: +SKIP
    >>> config["intermediate_size"], tensors["model.layers.0.self_attn.q_proj.weight"].shape  # doctest: +SKIP
    (13824, (5120, 5120))
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, LlamaConfig
from ..errors import CheckpointError
from .checkpoint import check_tensors
from .qk_permutation import unpermute_qk
from .sentencepiece_file import read_model_proto, special_piece_ids
from .torch_pickle import read_torch_file

# Meta's names -> HF's, with the axis along which Meta's model-parallel shards cut each tensor:
# ColumnParallelLinear (wq, wk, wv, w1, w3, output) splits its output rows, dim 0;
# RowParallelLinear (wo, w2) and ParallelEmbedding (tok_embeddings) split their columns, dim 1;
# None: the norms are whole in every shard.
META_LAYER_PARTS = {
    "attention.wq": ("self_attn.q_proj", 0),
    "attention.wk": ("self_attn.k_proj", 0),
    "attention.wv": ("self_attn.v_proj", 0),
    "attention.wo": ("self_attn.o_proj", 1),
    "feed_forward.w1": ("mlp.gate_proj", 0),
    "feed_forward.w2": ("mlp.down_proj", 1),
    "feed_forward.w3": ("mlp.up_proj", 0),
    "attention_norm": ("input_layernorm", None),
    "ffn_norm": ("post_attention_layernorm", None),
}
META_GLOBAL_PARTS = {
    "tok_embeddings": ("model.embed_tokens", 1),
    "norm": ("model.norm", None),
    "output": ("lm_head", 0),
}
# LLaMA-1's files also hold `rope.freqs`, RoPE's frequencies: recomputed from the config, never learned.
IGNORED = ("rope.freqs",)
# max_position_embeddings by --llama_version, as transformers' script sets it (params.json has no such field)
CONTEXT_LENGTH_FOR_VERSION = {"1": 2048, "2": 4096}
SHARD_NAME = re.compile(r"consolidated\.(\d+)\.pth")


def shard_files(ckpt_dir: Path) -> list[Path]:
    """consolidated.00.pth, consolidated.01.pth, ...: every shard, numbered from 0 without a gap."""
    found = {int(m.group(1)): p for p in ckpt_dir.iterdir() if (m := SHARD_NAME.fullmatch(p.name))}
    if not found:
        raise CheckpointError(f"{ckpt_dir}: no consolidated.00.pth found (Meta's checkpoint layout)")
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        raise CheckpointError(f"{ckpt_dir}: holds {len(found)} shards but consolidated.{missing[0]:02d}.pth "
                              f"is missing (shards are numbered from 00 without a gap)")
    return [found[i] for i in range(len(found))]


# -- params.json -> config.json ----------------------------------------------------------------

def intermediate_size(dim: int, ffn_dim_multiplier: float | None = None, multiple_of: int = 256) -> int:
    """The SwiGLU width of Meta's FeedForward: 2/3 of 4*dim, scaled, rounded up to a multiple.

    hidden = int(8*dim/3); hidden = int(ffn_dim_multiplier * hidden) when set; then rounded up to a
    multiple of `multiple_of` (as transformers' `compute_intermediate_size`).
    >>> intermediate_size(4096), intermediate_size(8192, 1.3, 4096)  # Llama-2 7B and 70B
    (11008, 28672)
    """
    hidden = int(8 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def read_params(ckpt_dir: Path) -> dict:
    """params.json as a dict (some releases nest it under "model", as transformers' script allows)."""
    path = ckpt_dir / "params.json"
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{ckpt_dir}: no params.json (Meta's checkpoint layout needs one)") from None
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if isinstance(params, dict) and isinstance(params.get("model"), dict):
        params = params["model"]
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(params).__name__}")
    return params


def config_from_params(params: dict, vocab_size: int | None, llama_version: str = "1",
                       source: str = "params.json", special_ids: tuple[int, int] = (1, 2)) -> dict:
    """An HF `config.json` dict from Meta's params.json.

    vocab_size: the tokenizer's size, used when params.json says -1. max_position_embeddings:
    params.json's `max_seq_len` when present, else as transformers' script: 16384 for Code Llama
    (rope_theta above 10000), else 2048 for `llama_version` "1" and 4096 for "2".
    """
    def field(name: str, kind=int, default: Any = ...) -> Any:
        value = params.get(name, default)
        if value is ...:
            raise ConfigError(f"{source}: field {name!r} is missing")
        ok = (type(value) is int and value > 0) if kind is int else (  # JSON's Infinity parses: not a size
            isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf)
        if not ok:
            raise ConfigError(f"{source}: field {name!r} is {value!r}, expected a positive "
                              f"{'integer' if kind is int else 'finite number'}")
        return kind(value)

    if llama_version not in CONTEXT_LENGTH_FOR_VERSION:
        raise ValueError(f"llama_version {llama_version!r} is not supported; choose one of "
                         f"{', '.join(CONTEXT_LENGTH_FOR_VERSION)} (Llama 3 ships a tiktoken tokenizer, not read here)")
    dim, n_heads = field("dim"), field("n_heads")
    n_kv_heads = field("n_kv_heads") if params.get("n_kv_heads") is not None else n_heads
    multiplier = field("ffn_dim_multiplier", float) if params.get("ffn_dim_multiplier") is not None else None
    rope_theta = field("rope_theta", float, 10000.0)
    if params.get("vocab_size", -1) != -1:
        vocab_size = field("vocab_size")
    elif vocab_size is None:
        raise CheckpointError(f"{source}: vocab_size is -1 (\"from the tokenizer\") but there is no tokenizer.model "
                              f"beside it")
    if params.get("max_seq_len") is not None:
        context = field("max_seq_len")
    elif rope_theta > 10000.0:
        context = 16384
    else:
        context = CONTEXT_LENGTH_FOR_VERSION[llama_version]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": dim,
        "intermediate_size": intermediate_size(dim, multiplier, field("multiple_of", int, 256)),
        "num_hidden_layers": field("n_layers"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": context,
        "rms_norm_eps": field("norm_eps", float),
        "rope_theta": rope_theta,
        "tie_word_embeddings": False,
        "bos_token_id": special_ids[0],
        "eos_token_id": special_ids[1],
        "pad_token_id": None,
    }


# -- shards -> HF tensors ----------------------------------------------------------------------

def hf_name(meta_name: str, source: str = "checkpoint") -> tuple[str, int | None]:
    """Meta's tensor name -> (HF's name, the axis its shards are cut along).

    >>> hf_name("layers.3.attention.wq.weight")
    ('model.layers.3.self_attn.q_proj.weight', 0)
    >>> hf_name("tok_embeddings.weight")
    ('model.embed_tokens.weight', 1)
    """
    stem, _, kind = meta_name.rpartition(".")
    layer = re.fullmatch(r"layers\.(\d+)\.(.+)", stem)
    if kind == "weight":
        if layer and layer.group(2) in META_LAYER_PARTS:
            part, axis = META_LAYER_PARTS[layer.group(2)]
            return f"model.layers.{layer.group(1)}.{part}.weight", axis
        if stem in META_GLOBAL_PARTS:
            part, axis = META_GLOBAL_PARTS[stem]
            return f"{part}.weight", axis
    raise CheckpointError(f"{source}: tensor {meta_name!r} has no counterpart in a Hugging Face Llama model "
                          f"(known: {', '.join(META_GLOBAL_PARTS)}, layers.N.{{{', '.join(META_LAYER_PARTS)}}})")


def merge_shards(shards: list[tuple[Path, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Whole tensors (HF names, Meta's row order) from the model-parallel shards.

    A cut tensor is the shards' slices concatenated along its axis; a norm must be the same in
    every shard (it is replicated), and an error names the first one that is not.
    """
    first_path, first = shards[0]
    names = [n for n in first if n not in IGNORED]
    for path, tensors in shards[1:]:
        extra = sorted(set(tensors) - set(first)) or sorted(set(first) - set(tensors))
        if extra:
            raise CheckpointError(f"{path}: its tensors differ from {first_path.name}'s (first: {extra[0]!r})")
    out = {}
    for name in names:
        hf, axis = hf_name(name, str(first_path))
        parts = [tensors[name] for _, tensors in shards]
        if axis is None or len(parts) == 1:
            for path, tensors in shards[1:]:
                if not np.array_equal(tensors[name], parts[0]):
                    raise CheckpointError(f"{path}: tensor {name!r} is replicated in every shard but differs "
                                          f"from {first_path.name}'s")
            out[hf] = parts[0]
            continue
        shapes = [p.shape for p in parts]
        if any(len(s) != 2 or s[1 - axis] != shapes[0][1 - axis] for s in shapes):
            raise CheckpointError(f"{first_path.parent}: tensor {name!r} has shard shapes {shapes}, which do not "
                                  f"join along dim {axis}")
        out[hf] = np.concatenate(parts, axis=axis)
    return out


def read_meta_config(ckpt_dir: str | Path, llama_version: str = "1") -> dict:
    """The HF config dict of a Meta checkpoint directory, from params.json and tokenizer.model alone
    (its size and BOS/EOS ids); no shard is read."""
    ckpt_dir = Path(ckpt_dir)
    params = read_params(ckpt_dir)
    tokenizer = ckpt_dir / "tokenizer.model"
    vocab_size, special_ids = None, (1, 2)
    if tokenizer.is_file():
        proto = read_model_proto(tokenizer.read_bytes(), str(tokenizer))
        vocab_size, ids = len(proto["pieces"]), special_piece_ids(proto)
        special_ids = (ids["bos"], ids["eos"])
    return config_from_params(params, vocab_size, llama_version, str(ckpt_dir / "params.json"), special_ids)


def read_meta_checkpoint(ckpt_dir: str | Path, llama_version: str = "1", slicing=None
                         ) -> tuple[dict, dict[str, np.ndarray], set[str]]:
    """Read a Meta checkpoint directory: (HF config dict, HF-named tensors, names stored as bfloat16).

    Tensors keep their file's dtype (bfloat16: as float32, exactly); q_proj/k_proj rows come back
    in HF's layout. Names and shapes are checked against the config. With `slicing` (`checkpoint.Slicing`)
    rank r of N reads `consolidated.0r.pth` alone, which holds its slices, and N must be the shard count.
    """
    ckpt_dir = Path(ckpt_dir)
    config = read_meta_config(ckpt_dir, llama_version)
    files = shard_files(ckpt_dir)
    if slicing is not None:
        slicing.check(config)
        if len(files) != slicing.size:
            raise CheckpointError(f"{ckpt_dir}: holds {len(files)} model-parallel shards, and each of the "
                                  f"{slicing.size} ranks reads one: run it on {len(files)} ranks (mpirun -n "
                                  f"{len(files)}), or convert it to safetensors (tinyllama-ref convert) for any count")
        files = files[slicing.rank:slicing.rank + 1]
    shards = []
    bf16: set[str] = set()
    for path in files:
        tensors, bf16_names = read_torch_file(path)
        shards.append((path, tensors))
        bf16 |= bf16_names
    llama = LlamaConfig.from_dict(config, source=str(ckpt_dir / "params.json"))
    # Names and shapes checked first (permuting rows keeps a shape), so unpermute_qk gets whole heads.
    tensors = check_tensors(merge_shards(shards), llama, str(ckpt_dir), slicing)
    shard = 1 if slicing is None else slicing.size  # a shard holds 1/shard of the heads
    for name, w in tensors.items():
        if ".q_proj." in name or ".k_proj." in name:
            heads = llama.num_attention_heads if ".q_proj." in name else llama.num_key_value_heads
            tensors[name] = unpermute_qk(w, heads // shard)  # [heads*d, D]: per head, even rows then odd rows
    bf16 = {hf_name(n)[0] for n in bf16 if n not in IGNORED}
    embed = "model.embed_tokens.weight"
    config["torch_dtype"] = "bfloat16" if embed in bf16 else str(tensors[embed].dtype)
    return config, tensors, bf16
