"""Tokenizers from GGUF metadata (llama.cpp's file format), which carries the vocabulary as plain arrays.

    tokenizer.ggml.model        "llama" (SentencePiece BPE: tokens + scores + types) or "gpt2" (byte-level BPE: tokens + merges)
    tokenizer.ggml.tokens       the pieces, by id
    tokenizer.ggml.scores       SentencePiece scores ("llama")
    tokenizer.ggml.token_type   1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte (SentencePiece's numbering)
    tokenizer.ggml.merges       "left right" strings, best first ("gpt2")
    tokenizer.ggml.pre          the pre-tokenizer's name ("gpt2"; see tinyllama_ref.tokenizer.gguf_pretokenizers)
    tokenizer.ggml.{bos,eos,unknown,padding}_token_id, tokenizer.ggml.add_{bos,eos}_token, tokenizer.chat_template

This module is the one place that reads those keys. It gives our Tokenizer, which keeps beside its
model the same vocabulary written as a `tokenizer.json` (the `tokenizers` library's format): what
`save_pretrained`, and so `convert`, write for it.
"""
from __future__ import annotations

from functools import partial

from ..formats.gguf_file import GGUFError, read_gguf_file
from .gguf_pretokenizers import PreTokenizer, gguf_pre_tokenizer
from .hf_bpe import BYTE_TO_CHAR, MergesBPE
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


def add_bos_eos(metadata: dict) -> tuple[bool, bool]:
    """Whether encoding adds BOS and EOS: the file's flags, else llama.cpp's defaults."""
    # llama.cpp adds BOS to a SentencePiece vocabulary whose file does not say otherwise
    default_bos = metadata.get("tokenizer.ggml.model") == "llama"
    return (bool(metadata.get("tokenizer.ggml.add_bos_token", default_bos)),
            bool(metadata.get("tokenizer.ggml.add_eos_token", False)))


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
        model = _sentencepiece_model(meta, tokens, types, token_id("unknown"), source)
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
    model.spec = partial(tokenizer_json, meta, source)  # what save_pretrained writes: made only when saved
    added = [AddedToken(t, i, special=types[i] != USER_DEFINED)
             for i, t in enumerate(tokens) if int(types[i]) in special_types]
    bos, eos = token_id("bos"), token_id("eos")
    add_bos, add_eos = add_bos_eos(meta)
    return Tokenizer(
        model=model, added_tokens=added, bos_id=bos, eos_id=eos, unk_id=token_id("unknown"),
        pad_id=token_id("padding"), add_bos=add_bos and bos is not None, add_eos=add_eos and eos is not None,
        legacy=True, chat_template=meta.get("tokenizer.chat_template"), source=source)


def _sentencepiece_model(meta: dict, tokens: list[str], types: list, unk: int | None, source: str) -> SentencePieceBPE:
    """A "llama" vocabulary as SentencePiece's BPE: pieces, scores, types and the normalizer's settings."""
    scores = list(_require(meta, "tokenizer.ggml.scores", source))
    spec = NormalizerSpec(
        charsmap=parse_charsmap(bytes(meta.get("tokenizer.ggml.precompiled_charsmap") or b""), source),
        add_dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
        remove_extra_whitespaces=bool(meta.get("tokenizer.ggml.remove_extra_whitespaces", False)))
    sp_types = [int(t) for t in types]
    if unk is not None:  # as llama.cpp, the <unk> is the one the metadata names, whatever the types say
        # (Phi-3's file types its <unk> CONTROL and its 53 [PAD] pieces UNKNOWN: those become CONTROL)
        sp_types = [UNKNOWN if i == unk else CONTROL if t == UNKNOWN else t for i, t in enumerate(sp_types)]
    return SentencePieceBPE(pieces=tokens, scores=[float(s) for s in scores], types=sp_types,
                            normalizer=spec, byte_fallback=BYTE in types, source=source)


# -- the same vocabulary as a tokenizer.json -------------------------------------------------------

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
    translate = {"gpt2": _byte_level_json, "llama": _sentencepiece_json}.get(model)
    if translate is None:
        raise GGUFError(f"{source}: tokenizer.ggml.model is {model!r}; supported: 'gpt2' (byte-level BPE), "
                        f"'llama' (SentencePiece)")
    parts = translate(metadata, tokens, types, source)
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": parts["added_tokens"],
            "normalizer": parts["normalizer"], "pre_tokenizer": parts["pre_tokenizer"],
            "post_processor": _template(metadata, tokens, *add_bos_eos(metadata)),
            "decoder": parts["decoder"], "model": parts["model"]}


def _byte_level_json(metadata: dict, tokens: list[str], types: list, source: str) -> dict:
    """A "gpt2" vocabulary: byte-level BPE over the splits of its pre-tokenizer, no normalizer."""
    alphabet = set(BYTE_TO_CHAR.values())
    # every real byte-level token is spelled in the 256-character alphabet; respell any that is not
    # a USER_DEFINED token outside it (MPT's runs of spaces) is raw text, matched before the split
    vocab = {tok if set(tok) <= alphabet or kind == USER_DEFINED
             else "".join(BYTE_TO_CHAR[b] for b in tok.encode("utf-8")): i
             for i, (tok, kind) in enumerate(zip(tokens, types))}
    # a CONTROL token outside the alphabet is a converter's mislabel; as transformers, skip it
    added = [_added_token(i, tok, True) for i, (tok, kind) in enumerate(zip(tokens, types))
             if kind == CONTROL and set(tok) <= alphabet]
    added += [_added_token(i, tok, False) for i, (tok, kind) in enumerate(zip(tokens, types))
              if kind == USER_DEFINED and tok in vocab]
    pre = gguf_pre_tokenizer(metadata.get("tokenizer.ggml.pre"), source)
    bpe = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
           "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": pre.ignore_merges,
           "vocab": vocab, "merges": [m.split(" ") for m in metadata.get("tokenizer.ggml.merges", [])]}
    return {"added_tokens": added, "normalizer": None, "pre_tokenizer": _byte_level_pre_tokenizer(pre),
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": bpe}


def _byte_level_pre_tokenizer(pre: PreTokenizer) -> dict:
    """A pre-tokenizer in tokenizer.json's terms: each regex an Isolated split, then bytes -> characters."""
    splits = [{"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
              for regex in pre.splits]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {"type": "Sequence", "pretokenizers": [*splits, byte_level]}


def _sentencepiece_json(metadata: dict, tokens: list[str], types: list, source: str) -> dict:
    """A "llama" vocabulary: BPE with byte fallback, merges from the scores, and SentencePiece's "▁" spaces."""
    vocab = {tok: i for i, tok in enumerate(tokens)}
    added = [_added_token(i, tok, kind in (CONTROL, UNKNOWN)) for i, (tok, kind) in enumerate(zip(tokens, types))
             if kind in (CONTROL, UNKNOWN, USER_DEFINED)]
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    bpe = {"type": "BPE", "dropout": None, "unk_token": tokens[unk_id] if unk_id is not None else None,
           "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
           "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
           "merges": _sentencepiece_json_merges(metadata, tokens, vocab, source)}
    prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    return {"added_tokens": added, "normalizer": _sentencepiece_normalizer(prefix), "pre_tokenizer": None,
            "decoder": _sentencepiece_decoder(prefix), "model": bpe}


def _sentencepiece_json_merges(metadata: dict, tokens: list[str], vocab: dict[str, int], source: str) -> list:
    """The file's merges where it has them, else the ones its scores imply."""
    if "tokenizer.ggml.merges" in metadata:
        return [m.split(" ") for m in metadata["tokenizer.ggml.merges"]]
    scores = metadata.get("tokenizer.ggml.scores")
    if scores is None:
        raise GGUFError(f"{source}: a SentencePiece vocabulary needs tokenizer.ggml.scores or merges")
    return [list(m) for m in sentencepiece_merges(vocab, dict(zip(tokens, scores)))]


def _sentencepiece_normalizer(prefix: bool) -> dict:
    """As SentencePiece and llama.cpp: spaces become "▁", and each run of text (the whole text, or each
    piece between special tokens) gets a dummy "▁" in front, even one that starts with a space."""
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    return {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace]} if prefix else replace


def _sentencepiece_decoder(prefix: bool) -> dict:
    """"▁" back to spaces, byte pieces back to bytes, and the dummy prefix's space dropped."""
    steps = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]
    if prefix:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


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
