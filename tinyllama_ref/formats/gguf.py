r"""GGUF checkpoints: llama.cpp's one-file format, read into Hugging Face names and layouts.

A GGUF file holds key/value metadata (the hyper-parameters under `llama.*`, the tokenizer under
`tokenizer.*`) and tensors, most of them quantized in small blocks (Q4_1: each run of 32 weights
shares one scale and one minimum, and each weight keeps 4 bits). Reading one for our model is:

1. metadata -> an HF `config.json` dict   (`llama.embedding_length` -> `hidden_size`, ...);
2. each tensor -> float32                  (block types decoded in `ggml_quants`, the next chapter);
3. GGUF names  -> HF names                 (`blk.0.attn_q.weight` -> `model.layers.0.self_attn.q_proj.weight`);
4. q/k rows    -> HF's RoPE layout         (llama.cpp stores them permuted for interleaved RoPE).

`convert_gguf` also rebuilds the tokenizer the metadata describes as a `tokenizer.json`, so the
result is an ordinary HF checkpoint directory that needs neither llama.cpp nor this package.

    >>> config, tensors, metadata = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    >>> config["num_key_value_heads"], tensors["model.layers.0.self_attn.k_proj.weight"].shape  # doctest: +SKIP
    (3, (192, 576))
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..tokenizer.hf_bpe import BYTE_TO_CHAR
from ..tokenizer.sp_model import CONTROL, NORMAL, UNKNOWN, USER_DEFINED  # = tokenizer.ggml.token_type values
from .checkpoint import check_output_dir
from .ggml_quants import DECODERS, dequantize
from .gguf_file import GGUFError, GGUFTensor, read_gguf_file
from .gguf_pretokenizers import PreTokenizer, gguf_pre_tokenizer
from .hf_writer import write_checkpoint_dir
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


def dequantize_tensor(tensor: GGUFTensor, source: str = "GGUF") -> np.ndarray:
    """A GGUF tensor -> a float32 NumPy array of its shape (a copy, not a file view).

    float32, float16 and bfloat16 are plain element types; the block types (Q4_1: each run of 32
    weights shares a scale and a minimum) are decoded by `ggml_quants.dequantize`.
    """
    kind, raw = tensor.type_name, tensor.data
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
    return np.array(values, dtype=np.float32).reshape(tensor.shape)  # np.array copies out of the file


def read_gguf(path: str | Path, progress: bool = False) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Read a llama GGUF file: (HF config dict, HF-named float32 tensors, all metadata as plain values).

    Quantized tensors are dequantized to float32; q_proj/k_proj rows are returned in HF's layout.
    """
    path = Path(path)
    try:
        file = read_gguf_file(path)
    except GGUFError as e:
        raise GGUFError(f"not a readable GGUF file: {e}") from None
    source = str(path)
    metadata = file.metadata
    config = config_from_metadata(metadata, [t.name for t in file.tensors], source)

    items = file.tensors
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="dequantizing", unit="tensor", leave=False)
    tensors: dict[str, np.ndarray] = {}
    for t in items:
        name = hf_name(t.name, source)
        w = dequantize_tensor(t, source)
        if ".q_proj." in name:
            w = unpermute_qk(w, config["num_attention_heads"])
        elif ".k_proj." in name:
            w = unpermute_qk(w, config["num_key_value_heads"])
        tensors[name] = w

    embed = tensors.get("model.embed_tokens.weight")
    if embed is None:
        raise GGUFError(f"{source}: tensor token_embd.weight is missing")
    if embed.shape[0] != config["vocab_size"]:
        raise GGUFError(f"{source}: token_embd.weight has {embed.shape[0]} rows but the tokenizer lists "
                        f"{config['vocab_size']} tokens")
    return config, tensors, metadata


# -- the tokenizer -----------------------------------------------------------------------------

def _byte_level_pre_tokenizer(pre: PreTokenizer) -> dict:
    """A pre-tokenizer in tokenizer.json's terms: each regex an Isolated split, then bytes -> characters."""
    splits = [{"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
              for regex in pre.splits]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {"type": "Sequence", "pretokenizers": [*splits, byte_level]}


def sentencepiece_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a piece into two pieces,
    best score first (SentencePiece merges the pair whose result scores highest). As transformers'
    `generate_merges`, so both build the same tokenizer.

    >>> sentencepiece_merges({"a": 0, "b": 1, "ab": 2, "abb": 3}, {"a": 0, "b": 0, "ab": -1, "abb": -2})
    [('a', 'b'), ('ab', 'b')]
    """
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _added_token(token_id: int, content: str, special: bool) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def _template(metadata: dict, tokens: list[str], add_bos: bool, add_eos: bool) -> dict:
    """The post-processor that puts BOS/EOS around each sequence, as the metadata asks.

    With add_bos only: single = [<s>, $A], pair = [<s>, $A, <s>, $B] (as transformers' Llama).
    """
    ends = []  # (position, token id): BOS first, EOS last
    for flag, key, where in ((add_bos, "bos_token_id", 0), (add_eos, "eos_token_id", -1)):
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if flag and token_id is not None:
            ends.append((where, token_id))

    def sequence(seq_id: str, type_id: int) -> list:
        first = [{"SpecialToken": {"id": tokens[i], "type_id": type_id}} for where, i in ends if where == 0]
        last = [{"SpecialToken": {"id": tokens[i], "type_id": type_id}} for where, i in ends if where == -1]
        return first + [{"Sequence": {"id": seq_id, "type_id": type_id}}] + last

    special = {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]} for _, i in ends}
    return {"type": "TemplateProcessing", "single": sequence("A", 0),
            "pair": sequence("A", 0) + sequence("B", 1), "special_tokens": special}


def _add_bos_eos(metadata: dict) -> tuple[bool, bool]:
    # llama.cpp adds BOS to a SentencePiece vocabulary whose file does not say otherwise
    default_bos = metadata.get("tokenizer.ggml.model") == "llama"
    return (bool(metadata.get("tokenizer.ggml.add_bos_token", default_bos)),
            bool(metadata.get("tokenizer.ggml.add_eos_token", False)))


def tokenizer_json(metadata: dict, source: str = "GGUF") -> dict:
    """The `tokenizer.json` (the `tokenizers` library's format) for the vocabulary in GGUF metadata.

    "gpt2" vocabularies become byte-level BPE (pre-tokenizer chosen by `tokenizer.ggml.pre`);
    "llama" (SentencePiece) vocabularies become BPE with byte fallback, as transformers builds them.
    Tokens typed CONTROL become special added tokens, USER_DEFINED ones plain added tokens.
    """
    model = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise GGUFError(f"{source}: no tokenizer in the metadata (tokenizer.ggml.model/tokens missing)")
    types = metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    add_bos, add_eos = _add_bos_eos(metadata)

    if model == "gpt2":
        spelling = BYTE_TO_CHAR
        alphabet = set(spelling.values())
        # every real byte-level token is spelled in the 256-character alphabet; respell any that is not
        # a USER_DEFINED token outside it (MPT's runs of spaces) is raw text, matched before the split
        vocab = {tok if set(tok) <= alphabet or kind == USER_DEFINED
                 else "".join(spelling[b] for b in tok.encode("utf-8")): i
                 for i, (tok, kind) in enumerate(zip(tokens, types))}
        merges = [m.split(" ") for m in metadata.get("tokenizer.ggml.merges", [])]
        # a CONTROL token outside the alphabet is a converter's mislabel; as transformers, skip it
        added = [_added_token(i, tok, True) for i, (tok, kind) in enumerate(zip(tokens, types))
                 if kind == CONTROL and set(tok) <= alphabet]
        added += [_added_token(i, tok, False) for i, (tok, kind) in enumerate(zip(tokens, types))
                  if kind == USER_DEFINED and tok in vocab]
        pre = gguf_pre_tokenizer(metadata.get("tokenizer.ggml.pre"), source)
        pre_tokenizer = _byte_level_pre_tokenizer(pre)
        bpe = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
               "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
               "ignore_merges": pre.ignore_merges, "vocab": vocab, "merges": merges}
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        normalizer = None
    elif model == "llama":
        vocab = {tok: i for i, tok in enumerate(tokens)}
        if "tokenizer.ggml.merges" in metadata:
            merges = [m.split(" ") for m in metadata["tokenizer.ggml.merges"]]
        else:
            scores = metadata.get("tokenizer.ggml.scores")
            if scores is None:
                raise GGUFError(f"{source}: a SentencePiece vocabulary needs tokenizer.ggml.scores or merges")
            merges = [list(m) for m in sentencepiece_merges(vocab, dict(zip(tokens, scores)))]
        added = [_added_token(i, tok, kind in (CONTROL, UNKNOWN))
                 for i, (tok, kind) in enumerate(zip(tokens, types))
                 if kind in (CONTROL, UNKNOWN, USER_DEFINED)]
        unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
        bpe = {"type": "BPE", "dropout": None, "unk_token": tokens[unk_id] if unk_id is not None else None,
               "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
               "byte_fallback": True, "ignore_merges": False, "vocab": vocab, "merges": merges}
        prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
        # As SentencePiece and llama.cpp: spaces become "▁", and each run of text (the whole text, or
        # each piece between special tokens) gets a dummy "▁" in front, even one that starts with a space.
        replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        normalizer = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace]
                      } if prefix else replace
        pre_tokenizer = None
        steps = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                 {"type": "ByteFallback"}, {"type": "Fuse"}]
        if prefix:
            steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        decoder = {"type": "Sequence", "decoders": steps}
    else:
        raise GGUFError(f"{source}: tokenizer.ggml.model is {model!r}; supported: 'gpt2' (byte-level BPE), "
                        f"'llama' (SentencePiece)")
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
            "post_processor": _template(metadata, tokens, add_bos, add_eos),
            "decoder": decoder, "model": bpe}


def tokenizer_config(metadata: dict, config: dict) -> dict:
    """`tokenizer_config.json`: special tokens, BOS/EOS flags and the chat template from the metadata."""
    tokens = metadata["tokenizer.ggml.tokens"]
    add_bos, add_eos = _add_bos_eos(metadata)
    out: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": add_bos,
                           "add_eos_token": add_eos, "clean_up_tokenization_spaces": False,
                           "model_max_length": config["max_position_embeddings"]}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None:
            out[name] = tokens[token_id]
    if "tokenizer.chat_template" in metadata:
        out["chat_template"] = metadata["tokenizer.chat_template"]
    return out


# -- writing an HF checkpoint ------------------------------------------------------------------

def write_hf_checkpoint(gguf_path: str | Path, out_dir: str | Path, progress: bool = False,
                        force: bool = False) -> Path:
    """Write a GGUF file as an HF checkpoint directory: config.json, model.safetensors (float32),
    generation_config.json, and tokenizer.json + tokenizer_config.json when the file has a tokenizer.
    Returns `out_dir`.

    Everything is read and checked before anything is written. A non-empty `out_dir` is refused
    unless `force`; the files are written into a temporary directory beside it, which then takes
    its place (`hf_writer.write_checkpoint_dir`, the writer `Model.save_pretrained` uses), so a
    finished directory holds this checkpoint and nothing else.
    """
    out = check_output_dir(out_dir, force)
    config, tensors, metadata = read_gguf(gguf_path, progress=progress)
    files = {"config.json": config,
             "generation_config.json": {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                                        if config[k] is not None}}
    if "tokenizer.ggml.model" in metadata:
        files["tokenizer.json"] = tokenizer_json(metadata, str(gguf_path))
        files["tokenizer_config.json"] = tokenizer_config(metadata, config)
    else:
        warnings.warn(f"{gguf_path}: no tokenizer in the metadata; wrote the model without one", stacklevel=2)
    return write_checkpoint_dir(out, files, tensors, replace_dir=True)


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, progress: bool = True, force: bool = False) -> Path:
    """`tinyllama-ref convert model.gguf OUT_DIR`: `write_hf_checkpoint`, saying what it did."""
    out = write_hf_checkpoint(gguf_path, out_dir, progress=progress, force=force)
    if progress:
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        print(f"wrote {out}: {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
              f"{config['num_attention_heads']} heads / {config['num_key_value_heads']} KV heads, "
              f"vocab {config['vocab_size']} (float32 safetensors)")
    return out
