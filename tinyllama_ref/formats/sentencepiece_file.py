"""SentencePiece's `tokenizer.model`: a serialized ModelProto, read with our protobuf reader.

Only the fields that change encoding or decoding are kept. The tokenizer (`tokenizer.sp_model`) builds
its model from them; Meta's checkpoint reader (`formats.meta`) needs only the vocabulary's size and
its BOS/EOS ids.
"""
from __future__ import annotations

from .protobuf import ProtobufError, parse_message

# ModelProto.SentencePiece.Type; GGUF's tokenizer.ggml.token_type uses the same numbers (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE_MODEL_TYPE = 2
MODEL_TYPE_NAMES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}

# Field numbers from sentencepiece_model.proto (only the ones that change encoding or decoding).
PIECE_SCHEMA = {1: ("piece", "string"), 2: ("score", "float"), 3: ("type", "int32")}
TRAINER_SCHEMA = {
    3: ("model_type", "int32"), 4: ("vocab_size", "int32"), 22: ("split_by_whitespace", "bool"),
    24: ("treat_whitespace_as_suffix", "bool"), 35: ("byte_fallback", "bool"),
    40: ("unk_id", "int32"), 41: ("bos_id", "int32"), 42: ("eos_id", "int32"), 43: ("pad_id", "int32"),
    44: ("unk_surface", "string"), 45: ("unk_piece", "string"), 46: ("bos_piece", "string"),
    47: ("eos_piece", "string"), 48: ("pad_piece", "string"),
}
NORMALIZER_SCHEMA = {
    1: ("name", "string"), 2: ("precompiled_charsmap", "bytes"), 3: ("add_dummy_prefix", "bool"),
    4: ("remove_extra_whitespaces", "bool"), 5: ("escape_whitespaces", "bool"),
}
MODEL_SCHEMA = {
    1: ("pieces[]", ("message", PIECE_SCHEMA)), 2: ("trainer_spec", ("message", TRAINER_SCHEMA)),
    3: ("normalizer_spec", ("message", NORMALIZER_SCHEMA)),
    5: ("denormalizer_spec", ("message", NORMALIZER_SCHEMA)),
}


def read_model_proto(data: bytes, source: str = "<bytes>") -> dict:
    """The fields of a serialized ModelProto that `MODEL_SCHEMA` names; it must have pieces."""
    try:
        proto = parse_message(data, MODEL_SCHEMA)
    except ProtobufError as e:
        raise ValueError(f"{source} is not a valid SentencePiece model (protobuf error: {e})") from None
    if not proto.get("pieces"):
        raise ValueError(f"{source} is not a valid SentencePiece model: it has no pieces")
    return proto


def special_piece_ids(proto: dict) -> dict[str, int | None]:
    """The ids of BOS, EOS and PAD: sentencepiece finds them by piece text, and counts them only when
    they are CONTROL pieces.

    >>> special_piece_ids({"pieces": [{"piece": "<unk>", "type": 2}, {"piece": "<s>", "type": 3}]})
    {'bos': 1, 'eos': None, 'pad': None}
    """
    pieces, trainer = proto["pieces"], proto.get("trainer_spec", {})
    first_id = {}
    for i, p in enumerate(pieces):
        first_id.setdefault(p.get("piece", ""), i)
    out = {}
    for attr, default in (("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>")):
        i = first_id.get(trainer.get(f"{attr}_piece") or default)
        out[attr] = i if i is not None and pieces[i].get("type", NORMAL) == CONTROL else None
    return out
