"""Hugging Face's tokenizer API on our Tokenizer: `tok(texts, padding=..., truncation=...)`, special tokens
around one text or a pair, adding tokens, chat templates, and saving a directory transformers can load.

Each function here is bound as a method of `Tokenizer` under HF's name and with HF's argument names, and
gives what transformers gives for the same files (LlamaTokenizer for a tokenizer.model, the tokenizers-
backed PreTrainedTokenizerFast for a byte-level tokenizer.json); tests/test_tokenizer_hf_api.py checks it.

    >>> tok.pad_token = tok.eos_token        # LLaMA has no pad token; padding needs one  # doctest: +SKIP
    >>> batch = tok(["Hello world", "Hi"], padding=True, return_tensors="np")   # doctest: +SKIP
    >>> batch["input_ids"], batch["attention_mask"]                             # doctest: +SKIP
    (array([[1, 15043, 3186], [2, 1, 6324]]), array([[1, 1, 1], [0, 1, 1]]))

A pair of texts is laid out as LlamaTokenizer lays it out, BOS/EOS around each part as add_bos_token
and add_eos_token say: `<s> a </s> <s> b </s>`, token types 0 for the first part, 1 for the second.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .padding import pad_rows, truncate_longest_first

VERY_LARGE_INTEGER = int(1e30)  # transformers' model_max_length when the checkpoint gives none
LARGE_INTEGER = int(1e20)       # above this, model_max_length counts as "no limit"
NAMED_SPECIAL = ("bos", "eos", "unk", "pad")  # the order of HF's all_special_ids
PAD_MESSAGE = ("Asking to pad but the tokenizer does not have a padding token. Please select a token to use as "
               "`pad_token` `(tokenizer.pad_token = tokenizer.eos_token e.g.)` or add a new pad token via "
               "`tokenizer.add_special_tokens({'pad_token': '[PAD]'})`.")


@dataclass
class AddedToken:
    """A token matched in the text before the model runs (HF's AddedToken)."""
    content: str
    id: int
    special: bool = True
    lstrip: bool = False   # also swallow whitespace just before it
    rstrip: bool = False   # also swallow whitespace just after it


class BatchEncoding(dict):
    """What `tok(texts)` and `tok.batch_encode(texts)` return, as HF's BatchEncoding: a dict
    ("input_ids", "attention_mask", ...) whose keys also read as attributes (batch.input_ids)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no {key!r}; it holds {list(self)}") from None


# --- special tokens -----------------------------------------------------------------------------------
def alias(attr: str, convert=None):
    """A property that reads and writes `attr` under HF's name (add_bos_token is add_bos)."""
    return property(lambda tok: getattr(tok, attr),
                    lambda tok, value: setattr(tok, attr, value if convert is None else convert(value)))


def special_token_property(name: str):
    """A `bos_token`-style property: the token's text (None when unset); setting it to a token of the
    vocabulary sets `bos_id` (a new token must be added first: `add_special_tokens({"pad_token": "<pad>"})`)."""
    def get(tok):
        i = getattr(tok, f"{name}_id")
        return None if i is None else tok.id_to_piece(i)

    def set_(tok, value):
        if value is None:
            setattr(tok, f"{name}_id", None)
            return
        content = value if isinstance(value, str) else value.content
        i = tok.piece_to_id(content)
        if i is None:
            raise ValueError(f"{name}_token {content!r} is not in the vocabulary of {tok.source}; add it with "
                             f"add_special_tokens({{'{name}_token': {content!r}}})")
        setattr(tok, f"{name}_id", i)
    return property(get, set_)


def all_special_ids(tok) -> list[int]:
    """HF's all_special_ids: BOS, EOS, UNK, PAD (those set), then the extra special tokens, each once."""
    ids = [getattr(tok, f"{n}_id") for n in NAMED_SPECIAL] + [tok.piece_to_id(t) for t in tok.extra_special_tokens]
    return list(dict.fromkeys(i for i in ids if i is not None))


def special_tokens_map(tok) -> dict:
    """{"bos_token": "<s>", ...} for the named special tokens that are set."""
    return {f"{n}_token": tok.id_to_piece(getattr(tok, f"{n}_id")) for n in NAMED_SPECIAL
            if getattr(tok, f"{n}_id") is not None}


def _bos_eos(tok) -> tuple[list[int], list[int]]:
    """The ids put before and after each text: [bos_id] when add_bos_token, [eos_id] when add_eos_token."""
    for name, on in (("bos", tok.add_bos), ("eos", tok.add_eos)):
        if on and getattr(tok, f"{name}_id") is None:
            raise ValueError(f"add_{name}_token=True but {tok.source} defines no {name.upper()} token")
    return ([tok.bos_id] if tok.add_bos else []), ([tok.eos_id] if tok.add_eos else [])


def build_inputs_with_special_tokens(tok, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
    """LlamaTokenizer's layout: `<s> a </s>`, and for a pair `<s> a </s> <s> b </s>` (BOS/EOS as
    add_bos_token / add_eos_token say).

    >>> tok.build_inputs_with_special_tokens([5, 6], [7])     # doctest: +SKIP
    [1, 5, 6, 1, 7]
    """
    bos, eos = _bos_eos(tok)
    out = bos + list(token_ids_0) + eos
    if token_ids_1 is not None:
        out += bos + list(token_ids_1) + eos
    return out


def get_special_tokens_mask(tok, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                            already_has_special_tokens: bool = False) -> list[int]:
    """1 where build_inputs_with_special_tokens puts a special token, 0 on the text's own tokens; with
    already_has_special_tokens, 1 on every id of all_special_ids in token_ids_0."""
    if already_has_special_tokens:
        if token_ids_1 is not None:
            raise ValueError("You should not supply a second sequence if the provided sequence of ids is already "
                             "formatted with special tokens for the model.")
        special = set(all_special_ids(tok))
        return [1 if int(i) in special else 0 for i in token_ids_0]
    bos, eos = _bos_eos(tok)
    out = [1] * len(bos) + [0] * len(token_ids_0) + [1] * len(eos)
    if token_ids_1 is not None:
        out += [1] * len(bos) + [0] * len(token_ids_1) + [1] * len(eos)
    return out


def create_token_type_ids_from_sequences(tok, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
    """0 over the first part with its BOS/EOS, 1 over the second part with its BOS/EOS."""
    bos, eos = _bos_eos(tok)
    out = [0] * (len(bos) + len(token_ids_0) + len(eos))
    if token_ids_1 is not None:
        out += [1] * (len(bos) + len(token_ids_1) + len(eos))
    return out


# --- tokens <-> ids -----------------------------------------------------------------------------------
def get_vocab(tok) -> dict[str, int]:
    """Every token and its id: the model's vocabulary and the added tokens."""
    return {**tok.model.piece_to_id, **{t.content: t.id for t in tok.added_tokens}}


def convert_tokens_to_ids(tok, tokens):
    """A token's id (a str gives an int, a list a list); a token not in the vocabulary gives unk_token_id."""
    if tokens is None:
        return None
    if isinstance(tokens, str):
        i = tok.piece_to_id(tokens)
        return tok.unk_id if i is None else i
    return [convert_tokens_to_ids(tok, t) for t in tokens]


def convert_ids_to_tokens(tok, ids, skip_special_tokens: bool = False):
    """The token of an id (an int gives a str, a list a list); an id outside the vocabulary gives None
    (as the tokenizers library). skip_special_tokens leaves out the ids of all_special_ids."""
    def token(i):
        i = int(i)
        return tok.id_to_piece(i) if 0 <= i < len(tok) else None
    if isinstance(ids, (int, np.integer)):
        return token(ids)
    skip = set(all_special_ids(tok)) if skip_special_tokens else set()
    return [token(i) for i in ids if int(i) not in skip]


def batch_decode(tok, sequences, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None,
                 **kwargs) -> list[str]:
    """decode for each row of a batch (a list of lists, or a 2-D array)."""
    return [tok.decode(seq, skip_special_tokens=skip_special_tokens,
                       clean_up_tokenization_spaces=clean_up_tokenization_spaces) for seq in sequences]


# --- adding tokens ------------------------------------------------------------------------------------
def add_tokens(tok, new_tokens, special_tokens: bool = False) -> int:
    """Add tokens matched whole in text; returns how many are new as added tokens (HF's count).

    A token already in the model's vocabulary keeps its id (and still counts, as in the tokenizers
    library); any other takes the next id, len(tok). A token that is already an added token is skipped.
    """
    if not new_tokens:
        return 0
    if isinstance(new_tokens, (str, AddedToken)):
        new_tokens = [new_tokens]
    added = list(tok.added_tokens)
    by_content = {t.content: k for k, t in enumerate(added)}
    count, next_id = 0, len(tok)
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
        i = tok.model.piece_to_id.get(content)
        if i is None:
            i, next_id = next_id, next_id + 1
        strip = (False, False) if isinstance(t, str) else (bool(t.lstrip), bool(t.rstrip))
        added.append(AddedToken(content, i, special=special, lstrip=strip[0], rstrip=strip[1]))
        by_content[content] = len(added) - 1
        count += 1
    tok.set_added_tokens(added)
    return count


def add_special_tokens(tok, special_tokens_dict: dict, replace_extra_special_tokens: bool = True) -> int:
    """Add named special tokens ({"pad_token": "<pad>"}, or "extra_special_tokens": [...]) and point
    pad_token / pad_token_id (...) at them; returns how many tokens were new (0 for one already added)."""
    count = 0
    for key, value in special_tokens_dict.items():
        if key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            count += add_tokens(tok, [value], special_tokens=True)
            content = value if isinstance(value, str) else value.content
            setattr(tok, f"{key[:-6]}_id", tok.piece_to_id(content))
        elif key in ("extra_special_tokens", "additional_special_tokens"):
            values = [value] if isinstance(value, str) else list(value)
            count += add_tokens(tok, values, special_tokens=True)
            contents = [v if isinstance(v, str) else v.content for v in values]
            kept = [] if replace_extra_special_tokens else [c for c in tok.extra_special_tokens if c not in contents]
            tok.extra_special_tokens = kept + contents
        else:
            raise ValueError(f"add_special_tokens: key {key!r} is not one of bos_token, eos_token, unk_token, "
                             "pad_token, extra_special_tokens (this tokenizer has no sep/cls/mask tokens)")
    return count


# --- __call__: encode, truncate, pad ------------------------------------------------------------------
def _strategies(tok, padding, truncation, max_length, pad_to_multiple_of):
    """HF's _get_padding_truncation_strategies: ("longest"|"max_length"|None, "longest_first"|None, max_length)."""
    if max_length is not None and padding is False and truncation is None:
        truncation = "longest_first"  # HF: max_length alone turns truncation on
    kinds = {True: "longest", False: None, "longest": "longest", "max_length": "max_length", "do_not_pad": None}
    if not isinstance(padding, (bool, str)) or padding not in kinds:
        raise ValueError(f"{padding} is not a valid PaddingStrategy, please select one of "
                         "['longest', 'max_length', 'do_not_pad']")
    pad_kind = kinds[padding]
    if truncation in (None, False, "do_not_truncate"):
        trunc_kind = None
    elif truncation in (True, "longest_first"):
        trunc_kind = "longest_first"
    elif truncation in ("only_first", "only_second"):
        raise NotImplementedError(f"truncation={truncation!r} is not implemented here; use True / 'longest_first'")
    else:
        raise ValueError(f"{truncation} is not a valid TruncationStrategy, please select one of "
                         "['only_first', 'only_second', 'longest_first', 'do_not_truncate']")
    if max_length is None:
        if pad_kind == "max_length":
            if tok.model_max_length > LARGE_INTEGER:
                pad_kind = None
            else:
                max_length = tok.model_max_length
        if trunc_kind is not None:
            if tok.model_max_length > LARGE_INTEGER:
                trunc_kind = None
            else:
                max_length = tok.model_max_length
    if pad_kind is not None and tok.pad_id is None:
        raise ValueError(PAD_MESSAGE)
    if trunc_kind and pad_kind and pad_to_multiple_of is not None and max_length is not None \
            and max_length % pad_to_multiple_of:
        raise ValueError(f"Truncation and padding are both activated but truncation length ({max_length}) is not "
                         f"a multiple of pad_to_multiple_of ({pad_to_multiple_of}).")
    return pad_kind, trunc_kind, max_length


def call(tok, text, text_pair=None, add_special_tokens: bool = True, padding=False, truncation=None,
         max_length: int | None = None, pad_to_multiple_of: int | None = None, padding_side: str | None = None,
         return_tensors: str | None = None, return_token_type_ids: bool | None = None,
         return_attention_mask: bool | None = None, return_special_tokens_mask: bool = False,
         return_length: bool = False, verbose: bool = True, **kwargs):
    """Encode one text (or a list, or pairs) the way `tokenizer(...)` does in transformers; a BatchEncoding.

    padding: False/"do_not_pad", True/"longest" (to the longest row), "max_length" (to max_length);
    it needs a pad token (HF's ValueError otherwise). truncation: True/"longest_first" cuts to max_length,
    special tokens included; max_length alone turns it on. padding_side defaults to tok.padding_side.
    return_tensors=None gives lists (flat for one text), "np" int64 arrays [batch, seq].
    """
    if kwargs:
        raise TypeError(f"tokenizer call: unsupported arguments {sorted(kwargs)}")
    if return_tensors not in (None, "np"):
        raise ValueError(f"return_tensors must be None or 'np' (this package is NumPy-only), got {return_tensors!r}")

    def is_text(t):
        return isinstance(t, str) or (isinstance(t, (list, tuple)) and all(isinstance(x, str) for x in t))
    if not is_text(text) or (text_pair is not None and not is_text(text_pair)):
        raise ValueError("text input must be of type `str` (single example) or `list[str]` (batch)")
    pad_kind, trunc_kind, max_length = _strategies(tok, padding, truncation, max_length, pad_to_multiple_of)
    batched = isinstance(text, (list, tuple))
    if batched:
        if isinstance(text_pair, str):
            raise TypeError("when tokenizing batches of text, `text_pair` must be a list or tuple with the same "
                            "length as `text`.")
        if text_pair is not None and len(text) != len(text_pair):
            raise ValueError(f"batch length of `text`: {len(text)} does not match batch length of `text_pair`: "
                             f"{len(text_pair)}.")
        pairs = list(zip(text, text_pair)) if text_pair is not None else [(t, None) for t in text]
    else:
        pairs = [(text, text_pair or None)]

    n_special = len(sum(_bos_eos(tok), [])) if add_special_tokens else 0
    rows, types, specials = [], [], []
    for a, b in pairs:
        ids_a = tok.encode(a, add_special_tokens=False)
        ids_b = None if b is None else tok.encode(b, add_special_tokens=False)
        if trunc_kind and max_length is not None:
            budget = max_length - n_special * (1 if b is None else 2)
            ids_a, ids_b = truncate_longest_first(ids_a, ids_b, budget, tok.truncation_side)
        if add_special_tokens:
            rows.append(build_inputs_with_special_tokens(tok, ids_a, ids_b))
            types.append(create_token_type_ids_from_sequences(tok, ids_a, ids_b))
            specials.append(get_special_tokens_mask(tok, ids_a, ids_b))
        else:
            rows.append(ids_a + (ids_b or []))
            types.append([0] * len(ids_a) + [1] * len(ids_b or []))
            specials.append([0] * len(rows[-1]))

    masks = [[1] * len(r) for r in rows]
    if pad_kind is not None:
        width = max((len(r) for r in rows), default=0) if pad_kind == "longest" else max_length
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        side = padding_side if padding_side is not None else tok.padding_side
        rows, masks = pad_rows(rows, width, tok.pad_id, side)
        types = pad_rows(types, width, 0, side)[0]
        specials = pad_rows(specials, width, 1, side)[0]
    out = {"input_ids": rows}
    if return_token_type_ids:
        out["token_type_ids"] = types
    if return_attention_mask is None or return_attention_mask:
        out["attention_mask"] = masks
    if return_special_tokens_mask:
        out["special_tokens_mask"] = specials
    if return_length:
        out["length"] = [len(r) for r in rows]
    for key, value in out.items():
        if return_tensors == "np":
            out[key] = _as_array(value) if key != "length" else np.asarray(value)
        elif not batched and value and isinstance(value[0], list):  # (HF keeps "length" a list)
            out[key] = value[0]
    return BatchEncoding(out)


def _as_array(rows):
    """int64 [batch, seq]; rows of different lengths give an object array of 1-D arrays, as transformers 5."""
    if len({len(r) for r in rows}) <= 1:
        return np.array(rows, dtype=np.int64).reshape(len(rows), -1)
    arr = np.empty(len(rows), dtype=object)
    arr[:] = [np.asarray(r, dtype=np.int64) for r in rows]
    return arr


# --- chat templates -----------------------------------------------------------------------------------
def apply_chat_template(tok, conversation, tools=None, documents=None, chat_template: str | None = None,
                        add_generation_prompt: bool = False, continue_final_message: bool = False,
                        tokenize: bool = True, padding=False, truncation: bool = False,
                        max_length: int | None = None, return_tensors: str | None = None, return_dict: bool = True,
                        tokenizer_kwargs: dict | None = None, **kwargs):
    """transformers 5's apply_chat_template: the rendered text (tokenize=False), else a BatchEncoding
    with input_ids and attention_mask (return_dict=True, the default in transformers 5), else the ids.

    A list of conversations gives one row each. The text is encoded without adding BOS/EOS: the
    templates write their own. continue_final_message cuts the text right after the last message.
    """
    from .. import conversation as chat
    if isinstance(conversation, (list, tuple)) and not conversation:
        raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
    if any(callable(t) for t in tools or []):
        raise TypeError("tools must be JSON schemas (dicts); turning Python functions into schemas is not supported")
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt are not compatible.")
    batched = isinstance(conversation[0], (list, tuple))
    rendered = []
    for conv in (conversation if batched else [conversation]):
        text = chat.apply_chat_template(tok, list(conv), add_generation_prompt=add_generation_prompt, tokenize=False,
                                        chat_template=chat_template, tools=tools, documents=documents, **kwargs)
        if continue_final_message:
            text = _cut_after_final_message(text, conv[-1]["content"])
        rendered.append(text)
    if not tokenize:
        return rendered if batched else rendered[0]
    out = call(tok, rendered if batched else rendered[0], add_special_tokens=False, padding=padding,
               truncation=truncation, max_length=max_length, return_tensors=return_tensors, **(tokenizer_kwargs or {}))
    return out if return_dict else out["input_ids"]


def _cut_after_final_message(rendered: str, final: str) -> str:
    """The rendered chat up to the end of the last message's text (HF's continue_final_message)."""
    if final.strip() not in rendered:
        raise ValueError("continue_final_message is set but the final message does not appear in the chat after "
                         "applying the chat template!")
    at = rendered.rindex(final.strip())
    if rendered[at:at + len(final.lstrip())] == final:
        return rendered[:at + len(final.lstrip())]
    return rendered[:at + len(final.strip())]


# --- saving -------------------------------------------------------------------------------------------
def _write(path: Path, data: bytes | str) -> str:
    from ..formats.safetensors import replacing
    with replacing(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return str(path)


def _json(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def save_vocabulary(tok, save_directory, filename_prefix: str | None = None) -> tuple[str, ...]:
    """The vocabulary file(s): a SentencePiece model's tokenizer.model (the bytes it was read from); for
    byte-level BPE, vocab.json and merges.txt (GPT-2's files). Returns their paths."""
    directory = Path(save_directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"save_vocabulary: {directory} is not a directory")
    prefix = f"{filename_prefix}-" if filename_prefix else ""
    serialized = getattr(tok.model, "serialized", None)
    if serialized is not None:
        return (_write(directory / f"{prefix}tokenizer.model", serialized),)
    if hasattr(tok.model, "merges"):
        vocab = json.dumps(tok.model.piece_to_id, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tok.model.merges)
        return (_write(directory / f"{prefix}vocab.json", vocab),
                _write(directory / f"{prefix}merges.txt", merges))
    raise NotImplementedError(f"save_vocabulary: {tok.source} was not read from a tokenizer.model, so there are "
                              "no SentencePiece bytes to write back")


def _added_entry(t, read: dict | None = None) -> dict:
    """An added token as tokenizer files write it; single_word and normalized, which AddedToken does not
    keep, come from `read` (its entry in the tokenizer.json it was read from) where there is one."""
    read = read or {}
    return {"content": t.content, "lstrip": t.lstrip, "normalized": bool(read.get("normalized", not t.special)),
            "rstrip": t.rstrip, "single_word": bool(read.get("single_word")), "special": t.special}


def save_pretrained(tok, save_directory, filename_prefix: str | None = None, **kwargs) -> tuple[str, ...]:
    """Write a tokenizer directory that transformers' AutoTokenizer and our load_tokenizer both read back
    to the same ids: tokenizer.model (SentencePiece) or tokenizer.json (byte-level BPE), then
    tokenizer_config.json (added_tokens_decoder, BOS/EOS/UNK/PAD, add_bos_token...), special_tokens_map.json
    and chat_template.jinja (where transformers 5 keeps the template). Every file is written atomically."""
    directory = Path(save_directory)
    if directory.is_file():
        raise NotADirectoryError(f"save_pretrained: {directory} is a file, not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    prefix = f"{filename_prefix}-" if filename_prefix else ""
    files = []
    spec = getattr(tok.model, "spec", None)
    is_sp = getattr(tok.model, "serialized", None) is not None
    by_id = sorted(tok.added_tokens, key=lambda t: t.id)
    if is_sp:
        files += save_vocabulary(tok, directory, filename_prefix)
    elif spec is not None:
        read = {t.get("content"): t for t in spec.get("added_tokens") or []}
        added = [{"id": t.id, **_added_entry(t, read.get(t.content))} for t in by_id]
        files.append(_write(directory / f"{prefix}tokenizer.json", _json({**spec, "added_tokens": added})))
    else:
        raise NotImplementedError(f"save_pretrained: {tok.source} was read from neither a tokenizer.model nor a "
                                  "tokenizer.json, and writing one from a GGUF vocabulary is not implemented")
    named = special_tokens_map(tok)
    config = {
        "add_bos_token": tok.add_bos, "add_eos_token": tok.add_eos,
        "added_tokens_decoder": {str(t.id): _added_entry(t) for t in by_id},
        **{f"{n}_token": named.get(f"{n}_token") for n in NAMED_SPECIAL},
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": list(tok.extra_special_tokens),
        "model_max_length": tok.model_max_length,
        "padding_side": tok.padding_side, "truncation_side": tok.truncation_side,
        "tokenizer_class": tok.tokenizer_class or ("LlamaTokenizer" if is_sp else "PreTrainedTokenizerFast"),
    }
    if is_sp:
        config["legacy"] = tok.legacy
    files.append(_write(directory / f"{prefix}tokenizer_config.json", _json(config)))
    special_map = dict(named)
    if tok.extra_special_tokens:
        special_map["additional_special_tokens"] = list(tok.extra_special_tokens)
    files.append(_write(directory / f"{prefix}special_tokens_map.json", _json(special_map)))
    if tok.chat_template:
        files.append(_write(directory / "chat_template.jinja", tok.chat_template))
    return tuple(files)
