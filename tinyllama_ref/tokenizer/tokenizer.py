"""The Tokenizer front object: special tokens, BOS/EOS, batching (its loaders are in `loaders`).

A Tokenizer wraps one model (SentencePiece BPE for LLaMA, byte-level BPE for GPT-2-style
vocabularies) and adds what Hugging Face's tokenizers add around it:

- special tokens written in the text ("<s>", "</s>", "<|im_start|>") are cut out first and map
  straight to their ids; the text between them goes through the model;
- BOS/EOS around each encoded text (LLaMA: BOS yes, EOS no);
- `legacy` (LLaMA's SentencePiece only): HF's LlamaTokenizer with legacy=True encodes every piece of
  text between special tokens as a fresh sentence, with its own dummy-prefix space; legacy=False
  gives only the first piece the dummy prefix, so "Hello <s>." ends in "." and not "▁.".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from . import hf_api
from .hf_api import AddedToken, BatchEncoding  # noqa: F401 - defined with the API they belong to; re-exported


class TokenizerError(ValueError):
    """A token id, text or tokenizer file this package cannot use; the message says which and where."""


@dataclass
class Tokenizer:
    """Text <-> token ids for one checkpoint.

    >>> tok = load_tokenizer("path/to/llama")           # doctest: +SKIP
    >>> tok.encode("Hello world")                         # doctest: +SKIP
    [1, 15043, 3186]
    >>> tok.decode([1, 15043, 3186], skip_special_tokens=True)   # doctest: +SKIP
    'Hello world'

    It also answers to Hugging Face's tokenizer API (`tok(texts, padding=True)`, `add_special_tokens`,
    `apply_chat_template`, `save_pretrained`, ...): see `hf_api`.
    """
    model: object  # SentencePieceBPE or MergesBPE (hf_bpe): both have encode_chunk, decode, pieces, piece_to_id
    added_tokens: list = field(default_factory=list)
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = True
    add_eos: bool = False
    legacy: bool = True
    chat_template: str | None = None
    source: str = "<memory>"
    # as HF's tokenizer attributes: LlamaTokenizer pads on the left, PreTrainedTokenizerFast on the right
    padding_side: str = "right"
    truncation_side: str = "right"
    model_max_length: int = hf_api.VERY_LARGE_INTEGER
    extra_special_tokens: list = field(default_factory=list)  # more tokens counted in all_special_ids
    tokenizer_class: str | None = None  # the class save_pretrained names in tokenizer_config.json
    _splitter: re.Pattern | None = field(default=None, repr=False)
    _added_by_group: list = field(default_factory=list, repr=False)
    _added_by_content: dict = field(default_factory=dict, repr=False)
    _added_past_vocab: dict = field(default_factory=dict, repr=False)  # id -> text of tokens past the vocabulary

    def __post_init__(self):
        self.set_added_tokens(self.added_tokens)

    # --- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """The model's vocabulary, without tokens added past it (HF's vocab_size); len(tok) counts those too."""
        return len(self.model.pieces)

    def __len__(self) -> int:
        return self.vocab_size + len(self._added_past_vocab)

    def id_to_piece(self, i: int) -> str:
        if int(i) in self._added_past_vocab:
            return self._added_past_vocab[int(i)]
        if not 0 <= int(i) < self.vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary (ids 0..{len(self) - 1}) of {self.source}")
        return self.model.pieces[int(i)]

    def piece_to_id(self, piece: str) -> int | None:
        if piece in self._added_by_content:
            return self._added_by_content[piece].id
        return self.model.piece_to_id.get(piece)

    @property
    def special_ids(self) -> set:
        return {t.id for t in self.added_tokens if t.special}

    def set_added_tokens(self, tokens) -> None:
        """Replace the tokens that are matched in text (longest first at each position). Tokens past the
        vocabulary must take its next ids in turn (vocab_size, vocab_size + 1, ...); else nothing changes."""
        tokens = list(tokens)
        past = {t.id: t.content for t in tokens if t.id >= self.vocab_size}
        if sorted(past) != list(range(self.vocab_size, self.vocab_size + len(past))):
            raise TokenizerError(f"{self.source}: added_tokens past the vocabulary must take the ids "
                                 f"{self.vocab_size}, {self.vocab_size + 1}, ... in turn; they take {sorted(past)[:8]}")
        self.added_tokens = tokens
        self._added_by_content = {t.content: t for t in tokens}
        self._added_past_vocab = past
        ordered = sorted(self.added_tokens, key=lambda t: (-len(t.content), t.content))
        groups = []
        for t in ordered:
            pattern = re.escape(t.content)
            if t.lstrip:
                pattern = r"\s*" + pattern
            if t.rstrip:
                pattern = pattern + r"\s*"
            groups.append(f"({pattern})")
        self._splitter = re.compile("|".join(groups)) if groups else None
        self._added_by_group = ordered

    # --- encoding ---------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None,
               split_special_tokens: bool = False, add_special_tokens: bool = True) -> list[int]:
        """Token ids for text. add_bos/add_eos=None use the checkpoint's defaults (LLaMA: BOS only);
        add_special_tokens=False (HF's name) adds neither.

        Special tokens written in the text map to their ids unless split_special_tokens=True, which
        encodes them as plain text (what Meta's reference tokenizer does).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate: not a character, so it has no UTF-8 bytes
            raise TokenizerError(f"encode: the text holds {text[e.start]!r} (a lone surrogate, not a character) "
                                 f"at position {e.start}") from None
        add_bos = (self.add_bos if add_bos is None else add_bos) and add_special_tokens
        add_eos = (self.add_eos if add_eos is None else add_eos) and add_special_tokens
        ids = []
        if add_bos:
            if self.bos_id is None:
                raise ValueError(f"add_bos=True but {self.source} defines no BOS token")
            ids.append(self.bos_id)
        if self._splitter is None or split_special_tokens:
            ids += self.model.encode_chunk(text, at_start=True, legacy=self.legacy) if text else []
        else:
            pos = 0
            for m in self._splitter.finditer(text):
                if m.start() > pos:
                    ids += self.model.encode_chunk(text[pos:m.start()], at_start=pos == 0, legacy=self.legacy)
                ids.append(self._added_by_group[m.lastindex - 1].id)
                pos = m.end()
            if pos < len(text):
                ids += self.model.encode_chunk(text[pos:], at_start=pos == 0, legacy=self.legacy)
        if add_eos:
            if self.eos_id is None:
                raise ValueError(f"add_eos=True but {self.source} defines no EOS token")
            ids.append(self.eos_id)
        return ids

    def tokenize(self, text: str) -> list[str]:
        """The pieces of text, without BOS/EOS: "Hello world" -> ['▁Hello', '▁world'] (LLaMA)."""
        return [self.id_to_piece(i) for i in self.encode(text, add_bos=False, add_eos=False)]

    def batch_encode(self, texts, padding: str = "longest", padding_side: str = "left",
                     max_length: int | None = None, add_bos: bool | None = None,
                     add_eos: bool | None = None) -> BatchEncoding:
        """Encode several texts and pad them into int64 arrays [batch, seq] with an attention mask.

        Padding uses pad_id when the checkpoint has one, else eos_id (what HF users of LLaMA set,
        since LLaMA has no pad token), else 0. The value never matters to the model: the mask is 0 there.
        padding="longest" pads to the longest text; padding="max_length" pads to max_length.
        padding_side="left" (the default, what generation wants) or "right".

        >>> b = tok.batch_encode(["a b c", "a"])                          # doctest: +SKIP
        >>> b.attention_mask                                              # doctest: +SKIP
        array([[1, 1, 1, 1], [0, 0, 1, 1]])
        """
        if isinstance(texts, str):
            raise TypeError("batch_encode takes a list of str; for one text use encode")
        rows = [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]
        longest = max((len(r) for r in rows), default=0)
        if padding == "longest":
            width = longest
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            if longest > max_length:
                raise ValueError(f"a text encodes to {longest} tokens, more than max_length={max_length}")
            width = max_length
        else:
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        input_ids, attention_mask = hf_api.pad_rows(rows, width, self.pad_value, padding_side)
        return BatchEncoding(input_ids=np.array(input_ids, dtype=np.int64).reshape(len(rows), width),
                             attention_mask=np.array(attention_mask, dtype=np.int64).reshape(len(rows), width))

    @property
    def pad_value(self) -> int:
        """The id written on padding: pad_id, else eos_id, else 0."""
        for i in (self.pad_id, self.eos_id):
            if i is not None:
                return i
        return 0

    # --- decoding ---------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None,
               **kwargs) -> str:
        """Text for ids (a list, an array, or one int). Special tokens are written as their text unless
        skip_special_tokens.

        The text between special tokens decodes exactly as sentencepiece (or the tokenizers library)
        decodes it: the first word's dummy-prefix space is dropped, byte pieces are reassembled.
        clean_up_tokenization_spaces is accepted and has no effect: transformers 5 skips that clean-up
        for BPE tokenizers, and every tokenizer here is BPE.
        """
        ids = self._checked_ids([ids] if isinstance(ids, (int, np.integer)) else ids)
        if skip_special_tokens:
            special = self.special_ids
            ids = [i for i in ids if i not in special]
        return self.model.decode(ids, render_control=not skip_special_tokens, added=self._added_past_vocab)

    def _checked_ids(self, ids) -> list[int]:
        """decode's ids as Python ints: integers (a list, or a rectangular nested list), in the vocabulary."""
        try:
            arr = np.asarray(ids)
        except ValueError:  # ragged nested lists
            raise TokenizerError("decode takes a list of token ids (or a rectangular list of lists); "
                                 "got a ragged nested list") from None
        flat = arr.reshape(-1).tolist()
        if arr.size and arr.dtype.kind not in "iu":
            bad = next((x for x in flat if type(x) is not int), None)  # object arrays of huge ints: checked below
            if bad is not None or arr.dtype.kind != "O":
                raise TokenizerError(f"decode takes integer token ids, got {bad!r} ({arr.dtype} ids)")
        for pos, i in enumerate(flat):
            if not 0 <= i < len(self):
                raise TokenizerError(f"token id {i} is outside the vocabulary (ids 0..{len(self) - 1}) "
                                     f"of {self.source}, at position {pos}")
        return flat

    # --- Hugging Face's tokenizer API (hf_api.py) ---------------------------------------------
    __call__ = hf_api.call
    build_inputs_with_special_tokens = hf_api.build_inputs_with_special_tokens
    get_special_tokens_mask = hf_api.get_special_tokens_mask
    create_token_type_ids_from_sequences = hf_api.create_token_type_ids_from_sequences
    get_vocab = hf_api.get_vocab
    convert_tokens_to_ids = hf_api.convert_tokens_to_ids
    convert_ids_to_tokens = hf_api.convert_ids_to_tokens
    batch_decode = hf_api.batch_decode
    add_tokens = hf_api.add_tokens
    add_special_tokens = hf_api.add_special_tokens
    apply_chat_template = hf_api.apply_chat_template
    save_vocabulary = hf_api.save_vocabulary
    save_pretrained = hf_api.save_pretrained
    add_bos_token, add_eos_token = hf_api.alias("add_bos", bool), hf_api.alias("add_eos", bool)
    bos_token_id, eos_token_id = hf_api.alias("bos_id"), hf_api.alias("eos_id")
    unk_token_id, pad_token_id = hf_api.alias("unk_id"), hf_api.alias("pad_id")
    bos_token = hf_api.special_token_property("bos")
    eos_token = hf_api.special_token_property("eos")
    unk_token = hf_api.special_token_property("unk")
    pad_token = hf_api.special_token_property("pad")
    all_special_ids = property(hf_api.all_special_ids)
    all_special_tokens = property(lambda self: [self.id_to_piece(i) for i in self.all_special_ids])
    special_tokens_map = property(hf_api.special_tokens_map)
