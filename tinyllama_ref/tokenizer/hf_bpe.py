"""BPE by merge rank, as the Hugging Face `tokenizers` library runs it: GPT-2-style byte-level BPE
(SmolLM2, Llama-3) and the merges form of LLaMA's SentencePiece vocabulary (tokenizer.json).

The library is a pipeline, and so is this module:
  normalizer     text -> text        (LLaMA's old tokenizer.json: prepend "▁", replace " " by "▁")
  pre-tokenizer  text -> words       (byte-level: a regex cuts words, then every UTF-8 byte becomes one
                                      printable character, e.g. " " -> "Ġ"; Metaspace: " " -> "▁")
  model          word -> ids         (merge the adjacent pair of lowest rank until none is in the merges)
  decoder        tokens -> text      (byte-level: characters back to bytes; LLaMA: "▁" -> " ", <0xNN> -> bytes)
Words are cached: the same word always gives the same ids.
"""
from __future__ import annotations

import re as _re
from dataclasses import dataclass, field

from .bpe import bpe_merge, encode_words

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes map to themselves,
    the others (space, control bytes...) to U+0100 onwards, so that no byte is whitespace or invisible.

    >>> m = bytes_to_unicode(); m[ord("a")], m[ord(" ")], m[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _regex():
    try:
        import regex
    except ImportError as e:  # \p{L} and friends need the `regex` package
        raise ImportError("byte-level BPE pre-tokenizers need the `regex` package: pip install regex") from e
    return regex


def split_isolated(pieces: list[str], pattern) -> list[str]:
    """Cut each piece at the matches of pattern, keeping matches and the text between them.

    >>> import regex; split_isolated(["ab12c"], regex.compile(r"\\p{N}"))
    ['ab', '1', '2', 'c']
    """
    out = []
    for piece in pieces:
        pos = 0
        for m in pattern.finditer(piece):
            if m.start() > pos:
                out.append(piece[pos:m.start()])
            if m.end() > m.start():
                out.append(m.group())
            pos = m.end()
        if pos < len(piece):
            out.append(piece[pos:])
    return out


@dataclass
class MergesBPE:
    """A BPE model with ranked merges and the normalizer / pre-tokenizer / decoder steps around it."""
    pieces: list[str]                      # token strings by id (byte-level: in GPT-2's byte alphabet)
    merges: list[tuple[str, str]]          # best first
    byte_level: bool = False               # ByteLevel pre-tokenizer and decoder
    split_patterns: list[str] = field(default_factory=list)   # regexes applied one after another (Isolated)
    add_prefix_space: bool = False         # ByteLevel: prepend " " to a chunk that does not start with one
    normalizer: list = field(default_factory=list)  # [("prepend", "▁") | ("replace", " ", "▁")], in order, every chunk
    metaspace: str | None = None           # Metaspace pre-tokenizer replacement, e.g. "▁"
    metaspace_prepend: str = "never"       # "always", "first" or "never"
    metaspace_split: bool = False
    byte_fallback: bool = False
    unk_id: int | None = None
    fuse_unk: bool = False
    ignore_merges: bool = False
    decoder: list = field(default_factory=list)  # [("replace", a, b) | ("byte_fallback",) | ("fuse",) | ("strip", c, n) | ("byte_level",) | ("metaspace", r, prepend)]
    source: str = "<memory>"
    spec: object = field(default=None, repr=False)  # the tokenizer.json it was read from, for saving it back
    # (a dict; for a GGUF vocabulary, a function that makes it when saved)
    piece_to_id: dict = field(default_factory=dict, repr=False)
    ranks: dict = field(default_factory=dict, repr=False)
    word_cache: dict = field(default_factory=dict, repr=False)
    _patterns: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        self.piece_to_id = {p: i for i, p in enumerate(self.pieces)}
        for k, (a, b) in enumerate(self.merges):
            if a not in self.piece_to_id or b not in self.piece_to_id or a + b not in self.piece_to_id:
                raise ValueError(f"{self.source}: merge {k} ({a!r}, {b!r}) uses a token that is not in the vocabulary")
            self.ranks.setdefault((a, b), k)
        if self.split_patterns:
            regex = _regex()
            self._patterns = [regex.compile(p) for p in self.split_patterns]

    @staticmethod
    def from_vocab_and_merges(tokens, merges, pattern, source="<memory>", ignore_merges=False) -> "MergesBPE":
        """A GPT-2-style byte-level BPE from token strings and "left right" merge strings (GGUF's layout)."""
        pairs = []
        for k, m in enumerate(merges):
            parts = m.split(" ") if isinstance(m, str) else list(m)
            if len(parts) != 2:
                raise ValueError(f"{source}: merge {k} {m!r} is not two tokens separated by one space")
            pairs.append(tuple(parts))
        return MergesBPE(pieces=list(tokens), merges=pairs, byte_level=True, split_patterns=pattern,
                         ignore_merges=ignore_merges, decoder=[("byte_level",)], source=source)

    # --- encoding ---------------------------------------------------------------------------
    def encode_chunk(self, text: str, at_start: bool, legacy: bool = True) -> list[int]:
        """Ids for text found between added tokens (at_start: it begins the whole input)."""
        for step in self.normalizer:  # the old LLaMA tokenizer.json: Prepend("▁"), Replace(" ", "▁")
            text = step[1] + text if step[0] == "prepend" else text.replace(step[1], step[2])
        words = [text]
        if self.metaspace is not None:
            text = text.replace(" ", self.metaspace)
            if not text.startswith(self.metaspace) and (
                    self.metaspace_prepend == "always" or (self.metaspace_prepend == "first" and at_start)):
                text = self.metaspace + text
            words = [text] if not self.metaspace_split else \
                [w for w in _re.split("(?=" + _re.escape(self.metaspace) + ")", text) if w]
        if self.byte_level and self.add_prefix_space and not text.startswith(" "):
            text = " " + text
            words = [text]
        for pattern in self._patterns:
            words = split_isolated(words, pattern)
        if self.byte_level:
            words = ["".join(BYTE_TO_CHAR[b] for b in word.encode("utf-8")) for word in words]
        return encode_words(words, self._encode_word, self.word_cache)

    def _encode_word(self, word: str, stats: dict | None = None) -> list[int]:
        if self.ignore_merges and word in self.piece_to_id:
            return [self.piece_to_id[word]]
        known = self.piece_to_id
        symbols, frozen = [], []
        for ch in word:  # characters outside the vocabulary become bytes or <unk>, and never merge
            if ch in known:
                symbols.append(ch)
                frozen.append(False)
            elif self.byte_fallback and all(f"<0x{b:02X}>" in known for b in ch.encode("utf-8")):
                for b in ch.encode("utf-8"):
                    symbols.append(f"<0x{b:02X}>")
                    frozen.append(True)
            elif self.unk_id is not None:
                if not (self.fuse_unk and symbols and frozen[-1] and symbols[-1] == self.pieces[self.unk_id]):
                    symbols.append(self.pieces[self.unk_id])
                    frozen.append(True)
            # else: no way to write it (SmolLM2 lacks a few control bytes); tokenizers drops it, and so do we
        ranks = self.ranks
        merged = bpe_merge(symbols, lambda left, right: ranks.get((left, right)), frozen, stats)
        return [known[s] for s in merged]

    # --- decoding ---------------------------------------------------------------------------
    def decode(self, ids, render_control: bool = True, added: dict | None = None) -> str:
        """Text for ids through the decoder steps (the tokenizers library's decode); added maps ids
        past the vocabulary (tokens added later) to their text."""
        n = len(self.pieces)
        tokens = []
        for i in ids:
            if added and int(i) in added:
                tokens.append(added[int(i)])
                continue
            if not 0 <= int(i) < n:
                raise ValueError(f"token id {i} is outside the vocabulary (ids 0..{n - 1}) of {self.source}")
            tokens.append(self.pieces[int(i)])
        for step in self.decoder:
            tokens = DECODER_STEPS[step[0]](tokens, *step[1:])
        return "".join(tokens)


def _decode_byte_level(tokens):
    # each token's characters back to bytes (a token with a character outside GPT-2's byte
    # alphabet, like an added token, contributes its own UTF-8 bytes), then lossy UTF-8
    data = bytearray()
    for t in tokens:
        if all(c in CHAR_TO_BYTE for c in t):
            data += bytes(CHAR_TO_BYTE[c] for c in t)
        else:
            data += t.encode("utf-8")
    return [data.decode("utf-8", errors="replace")]


def _decode_byte_fallback(tokens):
    out, run = [], []
    byte_token = _re.compile(r"<0x([0-9A-F]{2})>")

    def flush():
        if run:
            try:
                out.append(bytes(run).decode("utf-8"))
            except UnicodeDecodeError:  # tokenizers writes one U+FFFD per byte of an invalid run
                out.extend("\ufffd" * len(run))
            run.clear()

    for t in tokens:
        m = byte_token.fullmatch(t)
        if m:
            run.append(int(m.group(1), 16))
        else:
            flush()
            out.append(t)
    flush()
    return out


def _decode_strip(tokens, content, start, stop):
    out = []
    for t in tokens:
        a = 0
        while a < start and t[a:a + 1] == content:
            a += 1
        b = len(t)
        while len(t) - b < stop and b > a and t[b - 1:b] == content:
            b -= 1
        out.append(t[a:b])
    return out


def _decode_metaspace(tokens, replacement, prepend_scheme):
    out = []
    for k, t in enumerate(tokens):
        t = t.replace(replacement, " ")
        if k == 0 and prepend_scheme != "never" and t.startswith(" "):
            t = t[1:]
        out.append(t)
    return out


DECODER_STEPS = {
    "byte_level": _decode_byte_level,
    "byte_fallback": _decode_byte_fallback,
    "fuse": lambda tokens: ["".join(tokens)],
    "replace": lambda tokens, old, new: [t.replace(old, new) for t in tokens],
    "strip": _decode_strip,
    "metaspace": _decode_metaspace,
}
