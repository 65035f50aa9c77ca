"""SentencePiece's normalizer: the precompiled character map, whitespace rules, and the U+2581 escape.

A `tokenizer.model` carries its normalization rules as `precompiled_charsmap`: a
darts-clone double-array trie over UTF-8 bytes whose leaves point into a blob of
NUL-terminated replacement strings. LLaMA's model has none (the "identity" rule);
models trained with SentencePiece's defaults carry NFKC ("nmt_nfkc") in it.

Blob layout: <trie size: uint32 little-endian><trie: that many bytes of uint32 units><replacements>.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

SPACE_SYMBOL = "\u2581"  # "▁", what SentencePiece writes for a space
MAX_TRIE_RESULTS = 32  # SentencePiece keeps only the first 32 prefix matches (kMaxTrieResultsSize)


@dataclass
class CharsMap:
    """A decoded precompiled_charsmap: the trie's units and the replacement-string blob."""
    units: list[int]
    replacements: bytes

    def longest_match(self, data: bytes, pos: int) -> tuple[int, bytes] | None:
        """The longest rule that matches data[pos:], as (bytes matched, replacement), or None.

        This is darts-clone's commonPrefixSearch: walk one byte at a time, XOR-ing the byte into
        the node position; a unit whose label differs ends the walk; a unit with a leaf records a
        match whose value is an offset into the replacement blob.
        """
        units = self.units
        node = units[0] >> 10 << ((units[0] & 0x200) >> 6)  # offset() of the root
        best, found = None, 0
        for i in range(pos, len(data)):
            byte = data[i]
            node ^= byte
            if node >= len(units):
                break
            unit = units[node]
            if unit & 0x800000FF != byte:  # label() keeps the MSB so a leaf unit never matches
                break
            node ^= unit >> 10 << ((unit & 0x200) >> 6)
            if unit & 0x100 and found < MAX_TRIE_RESULTS:  # has_leaf(): the value sits at the new position
                best = (i + 1 - pos, units[node] & 0x7FFFFFFF)
                found += 1
        if best is None or best[1] >= len(self.replacements):
            return None
        length, value = best
        end = self.replacements.index(b"\0", value)
        return length, self.replacements[value:end]


def parse_charsmap(blob: bytes, where: str) -> CharsMap | None:
    """Split a precompiled_charsmap blob into its trie and replacement strings (None when empty)."""
    if not blob:
        return None
    if len(blob) <= 4:
        raise ValueError(f"{where}: precompiled_charsmap is {len(blob)} bytes, too short to hold a trie")
    (trie_size,) = struct.unpack_from("<I", blob, 0)
    if trie_size >= len(blob) - 4 or trie_size < 1024 or trie_size % 1024:
        raise ValueError(f"{where}: precompiled_charsmap trie size {trie_size} does not fit its "
                         f"{len(blob)}-byte blob (must be a multiple of 1024 and leave room for strings)")
    units = list(struct.unpack_from(f"<{trie_size // 4}I", blob, 4))
    replacements = blob[4 + trie_size:]
    if not replacements.endswith(b"\0"):
        raise ValueError(f"{where}: precompiled_charsmap replacement strings are not NUL-terminated")
    return CharsMap(units, replacements)


@dataclass
class NormalizerSpec:
    """The NormalizerSpec fields that change what the model sees (defaults as in the proto)."""
    charsmap: CharsMap | None = None
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    treat_whitespace_as_suffix: bool = False  # from the TrainerSpec, but the normalizer obeys it
    user_defined: tuple = ()  # pieces the normalizer must pass through untouched (bytes)


def normalize(spec: NormalizerSpec, text: str) -> str:
    """Normalize text the way SentencePiece does before BPE.

    >>> normalize(NormalizerSpec(remove_extra_whitespaces=False), "Hello  world")
    '▁Hello▁▁world'
    >>> normalize(NormalizerSpec(), "  Hello  world ")
    '▁Hello▁world'
    """
    if not text:
        return ""
    if spec.charsmap is None and not any(b" " in u for u in spec.user_defined):
        return _normalize_no_rules(spec, text)
    return normalize_by_rules(spec, text)


def _normalize_no_rules(spec: NormalizerSpec, text: str) -> str:
    """The fast path when no character map applies: only the whitespace rules are left."""
    space = SPACE_SYMBOL if spec.escape_whitespaces else " "
    if spec.remove_extra_whitespaces:
        text = " ".join(w for w in text.split(" ") if w)
        if not text:
            return ""  # all spaces: SentencePiece returns "" without a dummy prefix
    if spec.escape_whitespaces:
        text = text.replace(" ", space)
    if spec.add_dummy_prefix and not spec.treat_whitespace_as_suffix:
        text = space + text
    if spec.remove_extra_whitespaces:
        text = text.rstrip(space)  # also strips a literal U+2581 at the end, as SentencePiece does
    if spec.add_dummy_prefix and spec.treat_whitespace_as_suffix:
        text = text + space
    return text


def normalize_by_rules(spec: NormalizerSpec, text: str) -> str:
    """SentencePiece's Normalizer::Normalize, step for step, on UTF-8 bytes.

    The input is cut into prefixes: a user-defined piece (kept as is), else the longest rule of the
    character map (replaced), else one character. Spaces inside each replacement are then escaped,
    and with remove_extra_whitespaces, runs of them are squeezed and the ends trimmed.
    """
    data = text.encode("utf-8")
    user_lengths = sorted({len(u) for u in spec.user_defined}, reverse=True)
    user_set = set(spec.user_defined)

    def next_prefix(pos: int) -> tuple[bytes, int]:
        for n in user_lengths:
            if data[pos:pos + n] in user_set:
                return data[pos:pos + n], n
        if spec.charsmap is not None:
            match = spec.charsmap.longest_match(data, pos)
            if match is not None:
                length, replacement = match
                return replacement, length
        n = _utf8_char_len(data[pos])
        return data[pos:pos + n], n

    space = (SPACE_SYMBOL if spec.escape_whitespaces else " ").encode("utf-8")
    pos, end = 0, len(data)
    if spec.remove_extra_whitespaces:
        while pos < end:
            piece, n = next_prefix(pos)
            if piece != b" ":
                break
            pos += n
    if pos >= end:
        return ""
    out = bytearray()
    if spec.add_dummy_prefix and not spec.treat_whitespace_as_suffix:
        out += space
    is_prev_space = spec.remove_extra_whitespaces
    while pos < end:
        piece, n = next_prefix(pos)
        if is_prev_space:
            piece = piece.lstrip(b" ")
        if piece:
            out += piece.replace(b" ", space)
            is_prev_space = piece.endswith(b" ")
        pos += n
        if not spec.remove_extra_whitespaces:
            is_prev_space = False
    if spec.remove_extra_whitespaces:
        while out.endswith(space):
            del out[-len(space):]
    if spec.add_dummy_prefix and spec.treat_whitespace_as_suffix:
        out += space
    return out.decode("utf-8")


def _utf8_char_len(lead: int) -> int:
    """Bytes in the UTF-8 character that starts with this byte (SentencePiece's OneCharLen)."""
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[lead >> 4]
