"""SentencePiece BPE, as LLaMA uses it: read `tokenizer.model`, encode and decode exactly like `sentencepiece`.

Encoding text:
  1. normalize: apply the character map (none for LLaMA), escape spaces as "▁" (U+2581) and
     add the dummy prefix: "Hello world" -> "▁Hello▁world".
  2. split into characters, keeping user-defined pieces whole (they never merge).
  3. BPE: repeatedly merge the adjacent pair whose concatenation is the vocabulary piece with
     the highest score (ties: leftmost), until no pair is in the vocabulary.
  4. map pieces to ids; a piece not in the vocabulary becomes <unk>, or with byte fallback its
     UTF-8 bytes as the pieces <0x00>..<0xFF> (in LLaMA at ids 3..258): "😀" -> <0xF0><0x9F><0x98><0x80>.

Decoding reverses it: "▁" back to " ", byte pieces reassembled into UTF-8 (each invalid byte
becomes U+FFFD), and the space of the dummy prefix dropped from the first piece.
"""
from __future__ import annotations

import dataclasses
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .bpe import bpe_merge, decode_utf8_per_byte, encode_words, make_splitter
from ..formats.sentencepiece_file import (BPE_MODEL_TYPE, BYTE, CONTROL, MODEL_TYPE_NAMES, NORMAL,  # noqa: F401
                                          UNKNOWN, UNUSED, USER_DEFINED, read_model_proto, special_piece_ids)
from .sp_normalizer import SPACE_SYMBOL, NormalizerSpec, normalize, parse_charsmap

MERGEABLE = (NORMAL, USER_DEFINED, UNUSED)  # the rest are "reserved": never formed by a merge
WORD_PATTERN = re.compile(SPACE_SYMBOL + "*[^" + SPACE_SYMBOL + "]+|" + SPACE_SYMBOL + "+")  # "▁▁Hello", or trailing "▁▁"


def byte_piece(b: int) -> str:
    """The piece that stands for one raw byte under byte fallback.

    >>> byte_piece(10)
    '<0x0A>'
    """
    return f"<0x{b:02X}>"


def score_priority(score: float) -> int:
    """An integer that orders scores exactly as SentencePiece's heap does (smaller merges first).

    SentencePiece compares the float32 bit patterns as integers, so -0.0 ranks below +0.0.

    >>> score_priority(-1.0) < score_priority(-2.0) and score_priority(0.0) < score_priority(-0.0)
    True
    """
    (bits,) = struct.unpack("<i", struct.pack("<f", score))
    rank = bits if bits >= 0 else -1 - (bits & 0x7FFFFFFF)
    return -rank


@dataclass
class SentencePieceBPE:
    """A SentencePiece BPE model: its pieces and the settings that change encoding and decoding."""
    pieces: list[str]
    scores: list[float]
    types: list[int]
    normalizer: NormalizerSpec
    byte_fallback: bool = False
    unk_id: int | None = None
    unk_surface: str = " \u2047 "
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    denormalizer: NormalizerSpec | None = None
    source: str = "<memory>"
    # derived in __post_init__
    piece_to_id: dict = field(default_factory=dict, repr=False)
    merge_priority: dict = field(default_factory=dict, repr=False)
    byte_ids: list = field(default_factory=list, repr=False)
    id_to_byte: dict = field(default_factory=dict, repr=False)
    user_defined_splitter: re.Pattern | None = field(default=None, repr=False)
    word_cache: dict | None = field(default=None, repr=False)
    has_unused: bool = False
    serialized: bytes | None = field(default=None, repr=False)  # the tokenizer.model bytes, saved back unchanged
    spec: object = field(default=None, repr=False)  # a GGUF vocabulary's tokenizer.json (a function making it)

    def __post_init__(self):
        where = self.source
        if not (len(self.pieces) == len(self.scores) == len(self.types)):
            raise ValueError(f"{where}: {len(self.pieces)} pieces, {len(self.scores)} scores, "
                             f"{len(self.types)} types: they must be the same length")
        unk_ids, byte_ids = [], {}
        for i, (piece, t) in enumerate(zip(self.pieces, self.types)):
            if not piece:
                raise ValueError(f"{where}: piece {i} is empty")
            if piece == "\0" and t == UNUSED:
                continue  # a NUL placeholder some converters write; SentencePiece skips it
            if "\0" in piece:
                raise ValueError(f"{where}: piece {i} {piece!r} contains a NUL character")
            if piece in self.piece_to_id:
                raise ValueError(f"{where}: piece {piece!r} is defined twice (ids {self.piece_to_id[piece]} and {i})")
            if t not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE):
                raise ValueError(f"{where}: piece {i} {piece!r} has unknown type {t}")
            self.piece_to_id[piece] = i
            if t in MERGEABLE:
                self.merge_priority[piece] = score_priority(self.scores[i])
            elif t == UNKNOWN:
                unk_ids.append(i)
            elif t == BYTE:
                if not self.byte_fallback:
                    raise ValueError(f"{where}: byte piece {piece!r} (id {i}) found although byte_fallback is off")
                m = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
                if m is None:
                    raise ValueError(f"{where}: byte piece {i} {piece!r} is not of the form <0xNN>")
                byte_ids[int(m.group(1), 16)] = i
        if len(unk_ids) > 1:
            raise ValueError(f"{where}: more than one <unk> piece (ids {unk_ids})")
        self.unk_id = unk_ids[0] if unk_ids else None
        if self.unk_id is None and not self.byte_fallback:
            raise ValueError(f"{where}: no piece of type UNKNOWN, and byte_fallback is off")
        if self.byte_fallback:
            missing = [b for b in range(256) if b not in byte_ids]
            if missing:
                raise ValueError(f"{where}: byte_fallback is on but {len(missing)} byte pieces are missing "
                                 f"(first: {byte_piece(missing[0])})")
            self.byte_ids = [byte_ids[b] for b in range(256)]
            self.id_to_byte = {i: b for b, i in byte_ids.items()}
        user_defined = [p for p, t in zip(self.pieces, self.types) if t == USER_DEFINED]
        self.user_defined_splitter = make_splitter(user_defined)
        self.normalizer.user_defined = tuple(u.encode("utf-8") for u in user_defined)
        self.has_unused = UNUSED in self.types
        if self.words_are_independent():
            self.word_cache = {}

    # --- the pieces -------------------------------------------------------------------------
    def words_are_independent(self) -> bool:
        """True when no piece can span a space: then each "▁word" encodes on its own and can be cached.

        A word here is a run of "▁" and the non-"▁" run after it ("▁▁Hello"). Cutting before such
        a run is safe when no mergeable piece has a "▁" right after another character. UNUSED
        pieces are resegmented with merge history of the whole string, so they turn caching off.
        """
        if self.has_unused or self.normalizer.treat_whitespace_as_suffix or not self.normalizer.escape_whitespaces:
            return False
        crosses = re.compile("[^" + SPACE_SYMBOL + "]" + SPACE_SYMBOL)
        return not any(crosses.search(p) for p in self.merge_priority)

    def id_to_piece(self, i: int) -> str:
        return self.pieces[i]

    def is_control(self, i: int) -> bool:
        return self.types[i] == CONTROL

    # --- encoding ---------------------------------------------------------------------------
    def encode(self, text: str, add_dummy_prefix: bool | None = None, stats: dict | None = None) -> list[int]:
        """Ids for text, exactly as sentencepiece's `encode(text)` (no BOS/EOS).

        add_dummy_prefix=False encodes a piece of text that does not start a sentence
        (what HF's legacy=False does after a special token).
        """
        spec = self.normalizer
        if add_dummy_prefix is not None and add_dummy_prefix != spec.add_dummy_prefix:
            spec = dataclasses.replace(spec, add_dummy_prefix=add_dummy_prefix)
        return self.encode_normalized(normalize(spec, text), stats)

    def encode_chunk(self, text: str, at_start: bool, legacy: bool) -> list[int]:
        """Encode text found between special tokens. HF's legacy=False gives the dummy prefix only to
        text at the very start; legacy=True (and sentencepiece itself) to every chunk."""
        return self.encode(text, add_dummy_prefix=None if (legacy or at_start) else False)

    def encode_normalized(self, normalized: str, stats: dict | None = None) -> list[int]:
        """Ids for an already-normalized string ("▁Hello▁world")."""
        if not normalized:
            return []
        if self.word_cache is None or stats is not None:
            ids = self._encode_word(normalized, stats)
        else:
            words = WORD_PATTERN.findall(normalized)
            ids = encode_words(words, self._encode_word, self.word_cache)
        if not self.byte_fallback and self.unk_id is not None:
            # SentencePiece emits one <unk> for a run of unknown pieces.
            unk = self.unk_id
            ids = [i for k, i in enumerate(ids) if i != unk or k == 0 or ids[k - 1] != unk]
        return ids

    def _encode_word(self, text: str, stats: dict | None = None) -> list[int]:
        symbols, frozen = list(text), None
        if self.user_defined_splitter is not None:
            symbols, frozen = [], []
            for k, part in enumerate(self.user_defined_splitter.split(text)):
                if k % 2:  # a user-defined piece: one symbol that never merges
                    symbols.append(part)
                    frozen.append(True)
                else:
                    symbols += part
                    frozen += [False] * len(part)
        priority = self.merge_priority
        rev_merge: dict[str, tuple[str, str]] = {}
        if self.has_unused:
            def find_merge(left, right):
                p = priority.get(left + right)
                if p is not None and self.types[self.piece_to_id[left + right]] == UNUSED:
                    rev_merge[left + right] = (left, right)  # to split it again afterwards
                return p
        else:
            def find_merge(left, right):
                return priority.get(left + right)
        pieces = bpe_merge(symbols, find_merge, frozen, stats)
        if self.has_unused:
            pieces = [q for p in pieces for q in self._resegment(p, rev_merge, 0)]
        ids = []
        for p in pieces:
            i = self.piece_to_id.get(p) if p in priority else None
            if i is not None:
                ids.append(i)
            elif self.byte_fallback:
                ids += [self.byte_ids[b] for b in p.encode("utf-8")]
            else:
                ids.append(self.unk_id)
        return ids

    def _resegment(self, piece: str, rev_merge: dict, depth: int) -> list[str]:
        """Split an UNUSED piece back into the pieces it was merged from (bpe_model.cc's resegment)."""
        i = self.piece_to_id.get(piece)
        if depth > 100 or i is None or self.types[i] != UNUSED or piece not in rev_merge:
            return [piece]  # an UNUSED piece with no merge record stays as it is: encoded as <unk>
        left, right = rev_merge[piece]
        return self._resegment(left, rev_merge, depth + 1) + self._resegment(right, rev_merge, depth + 1)

    # --- decoding ---------------------------------------------------------------------------
    def decode(self, ids, render_control: bool = False, added: dict | None = None) -> str:
        """Text for ids, exactly as sentencepiece's `decode(ids)`.

        Control pieces (<s>, </s>) are invisible, as in sentencepiece; with render_control they
        are written as their piece text, without changing how the text around them decodes.
        added maps ids past the vocabulary (tokens added later, as HF adds them) to their text,
        which decodes like a normal piece.
        """
        out: list[str] = []
        byte_queue = bytearray()
        has_text = False   # has any non-control text been written?
        strip_lead = True  # is the next piece still the first of the text (the dummy prefix)?
        spec = self.normalizer
        n = len(self.pieces)
        for i in ids:
            i = int(i)
            if added and i in added:
                piece, t = added[i], NORMAL
            elif not 0 <= i < n:
                raise ValueError(f"token id {i} is outside the vocabulary (ids 0..{n - 1}) of {self.source}")
            else:
                piece, t = self.pieces[i], self.types[i]
            if t == BYTE:
                byte_queue.append(self.id_to_byte[i])
                continue
            if byte_queue:
                text = decode_utf8_per_byte(bytes(byte_queue))
                out.append(text)
                has_text = has_text or bool(text)
                byte_queue.clear()
            if has_text:
                strip_lead = False
            if t == CONTROL:
                if render_control:
                    out.append(piece)
                continue
            text = piece
            stripped_bos_space = False
            if strip_lead and (spec.add_dummy_prefix or spec.remove_extra_whitespaces) \
                    and text.startswith(SPACE_SYMBOL):
                text = text[1:]  # the dummy prefix's space
                # with remove_extra_whitespaces every leading "▁" piece goes, not just the first
                stripped_bos_space = not spec.remove_extra_whitespaces
            text = self.unk_surface if t == UNKNOWN else text.replace(SPACE_SYMBOL, " ")
            if stripped_bos_space:
                strip_lead = False
            out.append(text)
            has_text = has_text or bool(text)
            if has_text:
                strip_lead = False
        if byte_queue:
            out.append(decode_utf8_per_byte(bytes(byte_queue)))
        text = "".join(out)
        if self.denormalizer is not None:
            text = normalize(self.denormalizer, text)
        return text


def load_sentencepiece_model(path) -> SentencePieceBPE:
    """Read a SentencePiece `tokenizer.model` (a serialized ModelProto) with our own protobuf reader."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"cannot read SentencePiece model {path}: {e.strerror or e}") from e
    return sentencepiece_model_from_bytes(data, str(path))


def sentencepiece_model_from_bytes(data: bytes, source: str = "<bytes>") -> SentencePieceBPE:
    """Parse a serialized ModelProto."""
    proto = read_model_proto(data, source)
    pieces = proto["pieces"]
    trainer = proto.get("trainer_spec", {})
    model_type = trainer.get("model_type", 1)
    if model_type != BPE_MODEL_TYPE:
        raise NotImplementedError(
            f"{source}: SentencePiece model type {MODEL_TYPE_NAMES.get(model_type, model_type)!r} is not supported; "
            "only BPE (what LLaMA uses) is implemented")
    norm = proto.get("normalizer_spec", {})
    spec = NormalizerSpec(
        charsmap=parse_charsmap(norm.get("precompiled_charsmap", b""), f"{source} normalizer_spec"),
        add_dummy_prefix=norm.get("add_dummy_prefix", True),
        remove_extra_whitespaces=norm.get("remove_extra_whitespaces", True),
        escape_whitespaces=norm.get("escape_whitespaces", True),
        treat_whitespace_as_suffix=trainer.get("treat_whitespace_as_suffix", False),
    )
    denorm = proto.get("denormalizer_spec", {})
    denormalizer = None
    if denorm.get("precompiled_charsmap"):
        denormalizer = NormalizerSpec(
            charsmap=parse_charsmap(denorm["precompiled_charsmap"], f"{source} denormalizer_spec"),
            add_dummy_prefix=denorm.get("add_dummy_prefix", True),
            remove_extra_whitespaces=denorm.get("remove_extra_whitespaces", True),
            escape_whitespaces=denorm.get("escape_whitespaces", True))
    model = SentencePieceBPE(
        pieces=[p.get("piece", "") for p in pieces],
        scores=[p.get("score", 0.0) for p in pieces],
        types=[p.get("type", NORMAL) for p in pieces],
        normalizer=spec,
        byte_fallback=trainer.get("byte_fallback", False),
        unk_surface=trainer.get("unk_surface", " \u2047 "),
        denormalizer=denormalizer,
        source=source,
        serialized=bytes(data),
    )
    for attr, i in special_piece_ids(proto).items():
        setattr(model, f"{attr}_id", i)
    return model

