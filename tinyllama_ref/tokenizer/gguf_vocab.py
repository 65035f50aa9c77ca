"""Tokenizers from GGUF metadata (llama.cpp's file format), which carries the vocabulary as plain arrays.

    tokenizer.ggml.model        "llama" (SentencePiece BPE: tokens + scores + types) or "gpt2" (byte-level BPE: tokens + merges)
    tokenizer.ggml.tokens       the pieces, by id
    tokenizer.ggml.scores       SentencePiece scores ("llama")
    tokenizer.ggml.token_type   1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte (SentencePiece's numbering)
    tokenizer.ggml.merges       "left right" strings, best first ("gpt2")
    tokenizer.ggml.pre          the pre-tokenizer's name ("gpt2"; see tinyllama_ref.formats.gguf_pretokenizers)
    tokenizer.ggml.{bos,eos,unknown,padding}_token_id, tokenizer.ggml.add_{bos,eos}_token, tokenizer.chat_template
"""
from __future__ import annotations

from ..formats.gguf_file import read_gguf_file
from ..formats.gguf_pretokenizers import gguf_pre_tokenizer
from .hf_bpe import MergesBPE
from .sp_model import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, SentencePieceBPE
from .sp_normalizer import NormalizerSpec, parse_charsmap
from .tokenizer import AddedToken, Tokenizer


def read_gguf_metadata(path) -> dict:
    """The key/value metadata of a GGUF file as plain Python values (tensors are not read)."""
    return read_gguf_file(path).metadata


def tokenizer_from_gguf(path) -> Tokenizer:
    """A Tokenizer from the metadata of a .gguf file."""
    return tokenizer_from_gguf_metadata(read_gguf_metadata(path), source=str(path))


def _require(meta: dict, key: str, source: str):
    if key not in meta:
        raise ValueError(f"{source}: GGUF metadata has no {key!r}, which a tokenizer needs")
    return meta[key]


def tokenizer_from_gguf_metadata(meta: dict, source: str = "<gguf metadata>") -> Tokenizer:
    """A Tokenizer from GGUF metadata (a dict of key -> Python value, as `read_gguf_metadata` gives).

    >>> tok = tokenizer_from_gguf_metadata(read_gguf_metadata("model.gguf"))   # doctest: +SKIP
    """
    kind = _require(meta, "tokenizer.ggml.model", source)
    tokens = list(_require(meta, "tokenizer.ggml.tokens", source))
    n = len(tokens)
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * n)
    if len(types) != n:
        raise ValueError(f"{source}: {n} tokens but {len(types)} token types")

    def token_id(name):
        i = meta.get(f"tokenizer.ggml.{name}_token_id")
        if i is None:
            return None
        if not 0 <= int(i) < n:
            raise ValueError(f"{source}: tokenizer.ggml.{name}_token_id = {i} is outside the vocabulary (0..{n - 1})")
        return int(i)

    if kind == "llama":
        scores = list(_require(meta, "tokenizer.ggml.scores", source))
        spec = NormalizerSpec(
            charsmap=parse_charsmap(bytes(meta.get("tokenizer.ggml.precompiled_charsmap") or b""), source),
            add_dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
            remove_extra_whitespaces=bool(meta.get("tokenizer.ggml.remove_extra_whitespaces", False)))
        sp_types = [int(t) for t in types]
        unk = token_id("unknown")
        if unk is not None:  # as llama.cpp, the <unk> is the one the metadata names, whatever the types say
            # (Phi-3's file types its <unk> CONTROL and its 53 [PAD] pieces UNKNOWN: those become CONTROL)
            sp_types = [UNKNOWN if i == unk else CONTROL if t == UNKNOWN else t for i, t in enumerate(sp_types)]
        model = SentencePieceBPE(pieces=tokens, scores=[float(s) for s in scores], types=sp_types,
                                 normalizer=spec, byte_fallback=BYTE in types, source=source)
        special_types = (CONTROL, UNKNOWN)
    elif kind == "gpt2":
        merges = list(_require(meta, "tokenizer.ggml.merges", source))
        pre = gguf_pre_tokenizer(meta.get("tokenizer.ggml.pre"), source)
        model = MergesBPE.from_vocab_and_merges(tokens, merges, list(pre.splits), source=source,
                                                ignore_merges=pre.ignore_merges)
        special_types = (CONTROL, USER_DEFINED, UNKNOWN)
    else:
        raise NotImplementedError(f"{source}: tokenizer.ggml.model = {kind!r} is not supported "
                                  "(only 'llama' SentencePiece BPE and 'gpt2' byte-level BPE)")
    added = [AddedToken(t, i, special=types[i] != USER_DEFINED)
             for i, t in enumerate(tokens) if int(types[i]) in special_types]
    bos, eos = token_id("bos"), token_id("eos")
    return Tokenizer(
        model=model, added_tokens=added, bos_id=bos, eos_id=eos, unk_id=token_id("unknown"),
        pad_id=token_id("padding"),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")) and bos is not None,
        add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None,
        legacy=True, chat_template=meta.get("tokenizer.chat_template"), source=source)
