r"""GGUF checkpoints: llama.cpp's one-file format, read into Hugging Face names and layouts.

A GGUF file holds key/value metadata (the hyper-parameters under `llama.*`, the tokenizer under
`tokenizer.*`) and tensors, most of them quantized in small blocks (Q4_1: each run of 32 weights
shares one scale and one minimum, and each weight keeps 4 bits). Reading one for our model is:

1. metadata -> an HF `config.json` dict   (`llama.embedding_length` -> `hidden_size`, ...);
2. each tensor -> float32                  (block types decoded in `ggml_quants`, the next chapter);
3. GGUF names  -> HF names                 (`blk.0.attn_q.weight` -> `model.layers.0.self_attn.q_proj.weight`);
4. q/k rows    -> HF's RoPE layout         (llama.cpp stores them permuted for interleaved RoPE;
                                           see `qk_permutation`).

`tinyllama_ref.convert` writes the result, with the tokenizer the metadata describes
(`tokenizer.gguf_vocab`), as an ordinary HF checkpoint directory that needs neither llama.cpp nor
this package.

    >>> config, tensors, metadata = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    >>> config["num_key_value_heads"], tensors["model.layers.0.self_attn.k_proj.weight"].shape  # doctest: +SKIP
    (3, (192, 576))
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .ggml_quants import DECODERS, dequantize
from .gguf_file import GGUFError, GGUFTensor, ggml_type, read_gguf_file
from .qk_permutation import unpermute_qk
from .safetensors import bf16_to_f32

# llama.cpp's names -> HF's. Inside a block ("blk.N.<part>"), then outside any block.
GGUF_LAYER_PARTS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GGUF_GLOBAL_PARTS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


# -- metadata ----------------------------------------------------------------------------------

def _rope_scaling(metadata: dict, arch: str, source: str) -> dict | None:
    """`{arch}.rope.scaling.*` -> HF's `rope_scaling` (None for plain RoPE)."""
    kind = metadata.get(f"{arch}.rope.scaling.type")
    factor = metadata.get(f"{arch}.rope.scaling.factor")
    if kind is None and f"{arch}.rope.scale_linear" in metadata:  # the key older files used
        kind, factor = "linear", metadata[f"{arch}.rope.scale_linear"]
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        scaling = {"rope_type": "yarn", "factor": float(factor)}
        original = metadata.get(f"{arch}.rope.scaling.original_context_length")
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    raise GGUFError(f"{source}: {arch}.rope.scaling.type is {kind!r}; supported: none, linear, yarn")


_REQUIRED = object()  # marks a metadata key that has no default


def config_from_metadata(metadata: dict, tensor_names: list[str], source: str = "GGUF") -> dict:
    """An HF `config.json` dict (model_type "llama") from GGUF metadata and the file's tensor names."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"{source}: general.architecture is {arch!r}; only 'llama' GGUF files can be read")

    def key(name: str, default: Any = _REQUIRED) -> Any:
        value = metadata.get(f"{arch}.{name}", default)
        if value is _REQUIRED:
            raise GGUFError(f"{source}: metadata key {arch}.{name} is missing")
        return value

    if "rope_freqs.weight" in tensor_names:
        raise GGUFError(f"{source}: holds rope_freqs.weight (Llama-3.1-style per-frequency RoPE factors), "
                        f"which this package does not support")
    def count(name: str, default: Any = _REQUIRED) -> int:
        value = key(name, default)
        if isinstance(value, list) and value and name == "attention.head_count_kv":  # some writers: one per layer
            if len(set(map(repr, value))) != 1:
                raise GGUFError(f"{source}: {arch}.{name} differs between layers: {value[:8]}")
            value = value[0]
        if type(value) is not int or value <= 0:
            raise GGUFError(f"{source}: metadata key {arch}.{name} is {value!r}, not a positive integer")
        return value

    for name in ("embedding_length", "feed_forward_length", "block_count", "context_length"):
        count(name)
    hidden, n_heads = count("embedding_length"), count("attention.head_count")
    n_kv_heads = count("attention.head_count_kv", n_heads)
    head_dim = key("attention.key_length", hidden // n_heads)
    rope_dim = key("rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise GGUFError(f"{source}: {arch}.rope.dimension_count is {rope_dim} but heads have dim {head_dim}; "
                        f"partial rotary embeddings are not part of Llama")
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab_size = len(tokens) if tokens is not None else key("vocab_size")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab_size),
        "hidden_size": int(hidden),
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": int(n_heads),
        "num_key_value_heads": int(n_kv_heads),
        "head_dim": int(head_dim),
        "hidden_act": "silu",
        "max_position_embeddings": int(key("context_length")),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(key("rope.freq_base", 10000.0)),  # llama.cpp's default base when unstated
        "rope_scaling": _rope_scaling(metadata, arch, source),
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "mlp_bias": "blk.0.ffn_up.bias" in tensor_names,
        # llama.cpp writes output.weight only when the head is not the embedding matrix
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }
    return config


# -- tensors ---------------------------------------------------------------------------------

def hf_name(gguf_name: str, source: str = "GGUF") -> str:
    """llama.cpp's tensor name -> HF's.

    >>> hf_name("blk.3.attn_q.weight")
    'model.layers.3.self_attn.q_proj.weight'
    >>> hf_name("output_norm.weight")
    'model.norm.weight'
    """
    stem, _, kind = gguf_name.rpartition(".")
    block = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if kind in ("weight", "bias"):
        if block and block.group(2) in GGUF_LAYER_PARTS:
            return f"model.layers.{block.group(1)}.{GGUF_LAYER_PARTS[block.group(2)]}.{kind}"
        if stem in GGUF_GLOBAL_PARTS:
            return f"{GGUF_GLOBAL_PARTS[stem]}.{kind}"
    raise GGUFError(f"{source}: tensor {gguf_name!r} has no counterpart in a Hugging Face Llama model "
                    f"(known: {', '.join(GGUF_GLOBAL_PARTS)}, blk.N.{{{', '.join(GGUF_LAYER_PARTS)}}})")


def dequantize_tensor(tensor: GGUFTensor, source: str = "GGUF", index: tuple = ()) -> np.ndarray:
    """A GGUF tensor -> a float32 NumPy array of its shape (a copy, not a file view).

    float32, float16 and bfloat16 are plain element types; the block types (Q4_1: each run of 32
    weights shares a scale and a minimum) are decoded by `ggml_quants.dequantize`. `index`: a slice per
    axis (a vector's, or a matrix's rows and columns); only the blocks that hold it are read and decoded.
    """
    kind, raw, shape, cut = tensor.type_name, tensor.data, tensor.shape, None
    if index:
        rows, columns = index if len(shape) == 2 else (slice(None), index[0])
        _, block, block_bytes = ggml_type(tensor.ggml_type)
        first, stop, _ = columns.indices(shape[-1])
        b0, b1 = first // block, -(-stop // block)  # the blocks that hold columns [first, stop)
        raw = raw.reshape(-1, raw.shape[-1])[rows][:, b0 * block_bytes:b1 * block_bytes]
        shape, cut = (raw.shape[0], (b1 - b0) * block), slice(first - b0 * block, stop - b0 * block)
    if kind == "F32":
        values = raw.view("<f4")
    elif kind == "F16":
        values = raw.view("<f2")
    elif kind == "BF16":
        values = bf16_to_f32(raw.view("<u2"))
    elif kind in DECODERS:
        values = dequantize(raw, kind)
    else:
        raise GGUFError(f"{source}: tensor {tensor.name!r} is stored as {kind}, which this package cannot "
                        f"dequantize (it reads F32, F16, BF16, {', '.join(DECODERS)})")
    values = np.array(values, dtype=np.float32).reshape(shape)  # np.array copies out of the file
    if cut is None:
        return values
    values = np.ascontiguousarray(values[:, cut])
    return values if len(tensor.shape) == 2 else values[0]


def read_gguf(path: str | Path, progress: bool = False, slicing=None) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Read a llama GGUF file: (HF config dict, HF-named float32 tensors, all metadata as plain values).

    Quantized tensors are dequantized to float32; q_proj/k_proj rows are returned in HF's layout.
    `slicing` (`checkpoint.Slicing`): only a rank's slice of each tensor is decoded.
    """
    path = Path(path)
    try:
        file = read_gguf_file(path)
    except GGUFError as e:
        raise GGUFError(f"not a readable GGUF file: {e}") from None
    source = str(path)
    metadata = file.metadata
    config = config_from_metadata(metadata, [t.name for t in file.tensors], source)
    if slicing is not None:
        slicing.check(config)

    items = file.tensors
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="dequantizing", unit="tensor", leave=False)
    tensors: dict[str, np.ndarray] = {}
    for t in items:
        name = hf_name(t.name, source)
        w = dequantize_tensor(t, source, () if slicing is None else slicing.index(name, t.shape))
        if ".q_proj." in name or ".k_proj." in name:
            heads = config["num_attention_heads" if ".q_proj." in name else "num_key_value_heads"]
            w = unpermute_qk(w, heads * w.shape[0] // t.shape[0])  # a rank's rows are whole heads
        tensors[name] = w

    embed = tensors.get("model.embed_tokens.weight")
    if embed is None:
        raise GGUFError(f"{source}: tensor token_embd.weight is missing")
    if embed.shape[0] != config["vocab_size"]:
        raise GGUFError(f"{source}: token_embd.weight has {embed.shape[0]} rows but the tokenizer lists "
                        f"{config['vocab_size']} tokens")
    return config, tensors, metadata
