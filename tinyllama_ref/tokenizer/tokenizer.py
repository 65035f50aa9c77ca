"""The Tokenizer front object: special tokens, BOS/EOS, batching, and Hugging Face's tokenizer API
(its loaders are in `loaders`).

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

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import hf_api
from .hf_api import AddedToken, BatchEncoding  # noqa: F401 - defined with the API they belong to; re-exported
from ..padding import pad_rows, truncate_longest_first


class TokenizerError(ValueError):
    """A token id, text or tokenizer file this package cannot use; the message says which and where."""


class _Renamed:
    """One of Tokenizer's fields under Hugging Face's name: `tok.add_bos_token` reads and writes `tok.add_bos`."""

    def __init__(self, field: str, convert=None):
        self.field, self.convert = field, convert

    def __get__(self, tok, owner=None):
        return self if tok is None else getattr(tok, self.field)

    def __set__(self, tok, value) -> None:
        setattr(tok, self.field, value if self.convert is None else self.convert(value))


class _TokenText:
    """A named special token as text (`tok.bos_token`): Tokenizer._token_named reads it, _set_token_named sets it."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, tok, owner=None):
        return self if tok is None else tok._token_named(self.name)

    def __set__(self, tok, value) -> None:
        tok._set_token_named(self.name, value)


@dataclass
class Tokenizer:
    """Text <-> token ids for one checkpoint.

    >>> tok = load_tokenizer("path/to/llama")           # doctest: +SKIP
    >>> tok.encode("Hello world")                         # doctest: +SKIP
    [1, 15043, 3186]
    >>> tok.decode([1, 15043, 3186], skip_special_tokens=True)   # doctest: +SKIP
    'Hello world'

    It also answers to Hugging Face's tokenizer API (`tok(texts, padding=True)`, `add_special_tokens`,
    `apply_chat_template`, `save_pretrained`, ...): the methods at the end of the class, with the
    options and results they share in `hf_api`.
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
        input_ids, attention_mask = pad_rows(rows, width, self.pad_value, padding_side)
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

    # --- Hugging Face's tokenizer API: HF's names and argument names, transformers' results ---------------
    # (tests/test_tokenizer_hf_api.py checks each). First HF's names for our fields (add_bos_token is add_bos,
    # bos_token_id is bos_id), and each named special token as text (bos_token: the text of bos_id; setting it
    # to a token of the vocabulary sets bos_id)
    add_bos_token, add_eos_token = _Renamed("add_bos", bool), _Renamed("add_eos", bool)
    bos_token_id, eos_token_id, unk_token_id, pad_token_id = (_Renamed(f"{n}_id") for n in hf_api.NAMED_SPECIAL)
    bos_token, eos_token, unk_token, pad_token = (_TokenText(n) for n in hf_api.NAMED_SPECIAL)

    def _token_named(self, name: str) -> str | None:
        """The text of the `name` ("bos", "eos", "unk", "pad") special token; None when it is unset."""
        i = getattr(self, f"{name}_id")
        return None if i is None else self.id_to_piece(i)

    def _set_token_named(self, name: str, value) -> None:
        """Point `{name}_id` at a token of the vocabulary, given as text or AddedToken (None unsets it);
        a new token must be added first: `add_special_tokens({"pad_token": "<pad>"})`."""
        if value is None:
            setattr(self, f"{name}_id", None)
            return
        content = value if isinstance(value, str) else value.content
        i = self.piece_to_id(content)
        if i is None:
            raise ValueError(f"{name}_token {content!r} is not in the vocabulary of {self.source}; add it with "
                             f"add_special_tokens({{'{name}_token': {content!r}}})")
        setattr(self, f"{name}_id", i)

    @property
    def all_special_ids(self) -> list[int]:
        """HF's all_special_ids: BOS, EOS, UNK, PAD (those set), then the extra special tokens, each once."""
        named = [getattr(self, f"{n}_id") for n in hf_api.NAMED_SPECIAL]
        ids = named + [self.piece_to_id(t) for t in self.extra_special_tokens]
        return list(dict.fromkeys(i for i in ids if i is not None))

    @property
    def all_special_tokens(self) -> list[str]:
        """The text of each of all_special_ids."""
        return [self.id_to_piece(i) for i in self.all_special_ids]

    @property
    def special_tokens_map(self) -> dict:
        """{"bos_token": "<s>", ...} for the named special tokens that are set."""
        return {f"{n}_token": self.id_to_piece(getattr(self, f"{n}_id")) for n in hf_api.NAMED_SPECIAL
                if getattr(self, f"{n}_id") is not None}

    def _bos_eos(self) -> tuple[list[int], list[int]]:
        """The ids put before and after each text: [bos_id] when add_bos_token, [eos_id] when add_eos_token."""
        for name, on in (("bos", self.add_bos), ("eos", self.add_eos)):
            if on and getattr(self, f"{name}_id") is None:
                raise ValueError(f"add_{name}_token=True but {self.source} defines no {name.upper()} token")
        return ([self.bos_id] if self.add_bos else []), ([self.eos_id] if self.add_eos else [])

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                         ) -> list[int]:
        """LlamaTokenizer's layout: `<s> a </s>`, and for a pair `<s> a </s> <s> b </s>` (BOS/EOS as
        add_bos_token / add_eos_token say).

        >>> tok.build_inputs_with_special_tokens([5, 6], [7])     # doctest: +SKIP
        [1, 5, 6, 1, 7]
        """
        bos, eos = self._bos_eos()
        out = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            out += bos + list(token_ids_1) + eos
        return out

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 where build_inputs_with_special_tokens puts a special token, 0 on the text's own tokens; with
        already_has_special_tokens, 1 on every id of all_special_ids in token_ids_0."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("You should not supply a second sequence if the provided sequence of ids is "
                                 "already formatted with special tokens for the model.")
            special = set(self.all_special_ids)
            return [1 if int(i) in special else 0 for i in token_ids_0]
        bos, eos = self._bos_eos()
        out = [1] * len(bos) + [0] * len(token_ids_0) + [1] * len(eos)
        if token_ids_1 is not None:
            out += [1] * len(bos) + [0] * len(token_ids_1) + [1] * len(eos)
        return out

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: list[int] | None = None
                                             ) -> list[int]:
        """0 over the first part with its BOS/EOS, 1 over the second part with its BOS/EOS."""
        bos, eos = self._bos_eos()
        out = [0] * (len(bos) + len(token_ids_0) + len(eos))
        if token_ids_1 is not None:
            out += [1] * (len(bos) + len(token_ids_1) + len(eos))
        return out

    def get_vocab(self) -> dict[str, int]:
        """Every token and its id: the model's vocabulary and the added tokens."""
        return {**self.model.piece_to_id, **{t.content: t.id for t in self.added_tokens}}

    def convert_tokens_to_ids(self, tokens):
        """A token's id (a str gives an int, a list a list); a token not in the vocabulary gives unk_token_id."""
        if tokens is None:
            return None
        if isinstance(tokens, str):
            i = self.piece_to_id(tokens)
            return self.unk_id if i is None else i
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """The token of an id (an int gives a str, a list a list); an id outside the vocabulary gives None
        (as the tokenizers library). skip_special_tokens leaves out the ids of all_special_ids."""
        def token(i):
            i = int(i)
            return self.id_to_piece(i) if 0 <= i < len(self) else None
        if isinstance(ids, (int, np.integer)):
            return token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [token(i) for i in ids if int(i) not in skip]

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None, **kwargs) -> list[str]:
        """decode for each row of a batch (a list of lists, or a 2-D array)."""
        return [self.decode(seq, skip_special_tokens=skip_special_tokens,
                            clean_up_tokenization_spaces=clean_up_tokenization_spaces) for seq in sequences]

    def add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        """Add tokens matched whole in text; returns how many are new as added tokens (HF's count).

        A token already in the model's vocabulary keeps its id (and still counts, as in the tokenizers
        library); any other takes the next id, len(tok). A token that is already an added token is skipped.
        """
        if not new_tokens:
            return 0
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        added = list(self.added_tokens)
        by_content = {t.content: k for k, t in enumerate(added)}
        count, next_id = 0, len(self)
        for t in new_tokens:
            content = t if isinstance(t, str) else getattr(t, "content", None)
            if not isinstance(content, str):
                raise TypeError(f"add_tokens takes str or AddedToken, got {type(t).__name__}")
            special = special_tokens or (not isinstance(t, str) and bool(t.special))
            if not content:
                continue
            if content in by_content:
                if special and not added[by_content[content]].special:  # now named as a special token
                    added[by_content[content]].special = True
                continue
            i = self.model.piece_to_id.get(content)
            if i is None:
                i, next_id = next_id, next_id + 1
            strip = (False, False) if isinstance(t, str) else (bool(t.lstrip), bool(t.rstrip))
            added.append(AddedToken(content, i, special=special, lstrip=strip[0], rstrip=strip[1]))
            by_content[content] = len(added) - 1
            count += 1
        self.set_added_tokens(added)
        return count

    def add_special_tokens(self, special_tokens_dict: dict, replace_extra_special_tokens: bool = True) -> int:
        """Add named special tokens ({"pad_token": "<pad>"}, or "extra_special_tokens": [...]) and point
        pad_token / pad_token_id (...) at them; returns how many tokens were new (0 for one already added)."""
        count = 0
        for key, value in special_tokens_dict.items():
            if key in ("bos_token", "eos_token", "unk_token", "pad_token"):
                count += self.add_tokens([value], special_tokens=True)
                content = value if isinstance(value, str) else value.content
                setattr(self, f"{key[:-6]}_id", self.piece_to_id(content))
            elif key in ("extra_special_tokens", "additional_special_tokens"):
                values = [value] if isinstance(value, str) else list(value)
                count += self.add_tokens(values, special_tokens=True)
                contents = [v if isinstance(v, str) else v.content for v in values]
                kept = [] if replace_extra_special_tokens else [c for c in self.extra_special_tokens
                                                                if c not in contents]
                self.extra_special_tokens = kept + contents
            else:
                raise ValueError(f"add_special_tokens: key {key!r} is not one of bos_token, eos_token, unk_token, "
                                 "pad_token, extra_special_tokens (this tokenizer has no sep/cls/mask tokens)")
        return count

    def __call__(self, text, text_pair=None, add_special_tokens: bool = True, padding=False, truncation=None,
                 max_length: int | None = None, pad_to_multiple_of: int | None = None,
                 padding_side: str | None = None, return_tensors: str | None = None,
                 return_token_type_ids: bool | None = None, return_attention_mask: bool | None = None,
                 return_special_tokens_mask: bool = False, return_length: bool = False, verbose: bool = True,
                 **kwargs) -> BatchEncoding:
        """Encode one text (or a list, or pairs) the way `tokenizer(...)` does in transformers; a BatchEncoding.

        padding: False/"do_not_pad", True/"longest" (to the longest row), "max_length" (to max_length);
        it needs a pad token (HF's ValueError otherwise). truncation: True/"longest_first" cuts to max_length,
        special tokens included; max_length alone turns it on. padding_side defaults to tok.padding_side.
        return_tensors=None gives lists (flat for one text), "np" int64 arrays [batch, seq].
        """
        hf_api.check_call_inputs(text, text_pair, return_tensors, kwargs)
        pad_kind, trunc_kind, max_length = hf_api.padding_strategies(
            padding, truncation, max_length, pad_to_multiple_of, self.model_max_length, self.pad_id)
        pairs = hf_api.text_pairs(text, text_pair)
        n_special = len(sum(self._bos_eos(), [])) if add_special_tokens else 0
        limit = max_length if trunc_kind else None
        encoded = [self._encode_pair(a, b, add_special_tokens, limit, n_special) for a, b in pairs]
        rows, types, specials = ([row[k] for row in encoded] for k in range(3))  # ids, token types, specials
        masks = [[1] * len(r) for r in rows]
        if pad_kind is not None:
            width = hf_api.pad_width(rows, pad_kind, max_length, pad_to_multiple_of)
            side = padding_side if padding_side is not None else self.padding_side
            rows, masks = pad_rows(rows, width, self.pad_id, side)
            types, specials = pad_rows(types, width, 0, side)[0], pad_rows(specials, width, 1, side)[0]
        return hf_api.batch_encoding({
            "input_ids": rows, "token_type_ids": types if return_token_type_ids else None,
            "attention_mask": masks if return_attention_mask is None or return_attention_mask else None,
            "special_tokens_mask": specials if return_special_tokens_mask else None,
            "length": [len(r) for r in rows] if return_length else None,
        }, return_tensors, batched=isinstance(text, (list, tuple)))

    def _encode_pair(self, a: str, b: str | None, add_special_tokens: bool, max_length: int | None,
                     n_special: int) -> tuple[list[int], list[int], list[int]]:
        """One row of `tok(...)`: the ids, token types and special-tokens mask of text a (and its pair b),
        cut to max_length with the n_special tokens around each part counted (None: no truncation)."""
        ids_a = self.encode(a, add_special_tokens=False)
        ids_b = None if b is None else self.encode(b, add_special_tokens=False)
        if max_length is not None:
            budget = max_length - n_special * (1 if b is None else 2)
            ids_a, ids_b = truncate_longest_first(ids_a, ids_b, budget, self.truncation_side)
        if add_special_tokens:
            return (self.build_inputs_with_special_tokens(ids_a, ids_b),
                    self.create_token_type_ids_from_sequences(ids_a, ids_b),
                    self.get_special_tokens_mask(ids_a, ids_b))
        ids = ids_a + (ids_b or [])
        return ids, [0] * len(ids_a) + [1] * len(ids_b or []), [0] * len(ids)

    def apply_chat_template(self, conversation, tools=None, documents=None, chat_template: str | None = None,
                            add_generation_prompt: bool = False, continue_final_message: bool = False,
                            tokenize: bool = True, padding=False, truncation: bool = False,
                            max_length: int | None = None, return_tensors: str | None = None,
                            return_dict: bool = True, tokenizer_kwargs: dict | None = None, **kwargs):
        """transformers 5's apply_chat_template: the rendered text (tokenize=False), else a BatchEncoding
        with input_ids and attention_mask (return_dict=True, the default in transformers 5), else the ids.

        A list of conversations gives one row each. The text is encoded without adding BOS/EOS: the
        templates write their own. continue_final_message cuts the text right after the last message.
        """
        from .. import conversation as chat
        if isinstance(conversation, (list, tuple)) and not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        if any(callable(t) for t in tools or []):
            raise TypeError("tools must be JSON schemas (dicts); turning Python functions into schemas is not "
                            "supported")
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt are not compatible.")
        batched = isinstance(conversation[0], (list, tuple))
        rendered = []
        for conv in (conversation if batched else [conversation]):
            text = chat.apply_chat_template(self, list(conv), add_generation_prompt=add_generation_prompt,
                                            tokenize=False, chat_template=chat_template, tools=tools,
                                            documents=documents, **kwargs)
            if continue_final_message:
                text = hf_api.cut_after_final_message(text, conv[-1]["content"])
            rendered.append(text)
        if not tokenize:
            return rendered if batched else rendered[0]
        out = self(rendered if batched else rendered[0], add_special_tokens=False, padding=padding,
                   truncation=truncation, max_length=max_length, return_tensors=return_tensors,
                   **(tokenizer_kwargs or {}))
        return out if return_dict else out["input_ids"]

    def save_vocabulary(self, save_directory, filename_prefix: str | None = None) -> tuple[str, ...]:
        """The vocabulary file(s): a SentencePiece model's tokenizer.model (the bytes it was read from); for
        byte-level BPE, vocab.json and merges.txt (GPT-2's files). Returns their paths."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise NotADirectoryError(f"save_vocabulary: {directory} is not a directory")
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        serialized = getattr(self.model, "serialized", None)
        if serialized is not None:
            return (hf_api.write_file(directory / f"{prefix}tokenizer.model", serialized),)
        if hasattr(self.model, "merges"):
            vocab = json.dumps(self.model.piece_to_id, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.model.merges)
            return (hf_api.write_file(directory / f"{prefix}vocab.json", vocab),
                    hf_api.write_file(directory / f"{prefix}merges.txt", merges))
        raise NotImplementedError(f"save_vocabulary: {self.source} was not read from a tokenizer.model, so there "
                                  "are no SentencePiece bytes to write back")

    def save_pretrained(self, save_directory, filename_prefix: str | None = None, **kwargs) -> tuple[str, ...]:
        """Write a tokenizer directory that transformers' AutoTokenizer and our load_tokenizer both read back
        to the same ids: tokenizer.model (SentencePiece) or tokenizer.json (byte-level BPE, or a GGUF
        vocabulary), then tokenizer_config.json, special_tokens_map.json and chat_template.jinja (where
        transformers 5 keeps the template). Every file is written atomically. Another tokenizer's files in the
        directory (a tokenizer.model beside the tokenizer.json saved, a chat_template.jinja when this tokenizer
        has no template) are removed first: they would load in place of, or over, what was saved."""
        directory = Path(save_directory)
        if directory.is_file():
            raise NotADirectoryError(f"save_pretrained: {directory} is a file, not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        name, vocabulary = hf_api.vocabulary_file(self)
        stale = sorted({f"{prefix}{n}" for n in hf_api.VOCABULARY_FILES} - {f"{prefix}{name}"})
        for n in stale + ["chat_template.jinja"] * (not self.chat_template):
            (directory / n).unlink(missing_ok=True)  # first: a crash leaves no other vocabulary beside this config
        config = hf_api.json_text(hf_api.tokenizer_config(self))
        files = [hf_api.write_file(directory / f"{prefix}{name}", vocabulary),
                 hf_api.write_file(directory / f"{prefix}tokenizer_config.json", config)]
        special_map = dict(self.special_tokens_map)
        if self.extra_special_tokens:
            special_map["additional_special_tokens"] = list(self.extra_special_tokens)
        files.append(hf_api.write_file(directory / f"{prefix}special_tokens_map.json",
                                       hf_api.json_text(special_map)))
        if self.chat_template:
            files.append(hf_api.write_file(directory / "chat_template.jinja", self.chat_template))
        return tuple(files)
