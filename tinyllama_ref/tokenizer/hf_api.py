"""What Hugging Face's tokenizer API on our Tokenizer shares: the types it returns (`AddedToken`,
`BatchEncoding`), the steps of `tok(texts, padding=..., truncation=...)` that need no tokenizer (its
options, its inputs, its result), and the files `Tokenizer.save_pretrained` and `convert` write.

The methods themselves (`__call__`, `add_special_tokens`, `apply_chat_template`, ...) are in
`Tokenizer`'s class body under HF's names and with HF's argument names, and give what transformers gives
for the same files (LlamaTokenizer for a tokenizer.model, the tokenizers-backed PreTrainedTokenizerFast
for a byte-level tokenizer.json); tests/test_tokenizer_hf_api.py checks it.

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


# --- __call__'s steps: options, inputs, outputs -----------------------------------------------------
def padding_strategies(padding, truncation, max_length, pad_to_multiple_of, model_max_length: int,
                       pad_id: int | None):
    """HF's _get_padding_truncation_strategies: ("longest"|"max_length"|None, "longest_first"|None, max_length)."""
    for name, v in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
        if v is not None and not isinstance(v, (int, np.integer)):  # transformers' own TypeError, with the name
            raise TypeError(f"{name} must be an integer or None, got {v!r}")
        if v is not None and v < 0:  # transformers' fast tokenizers raise OverflowError deep in Rust
            raise ValueError(f"{name} must be >= 0, got {v}")
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
            if model_max_length > LARGE_INTEGER:
                pad_kind = None
            else:
                max_length = model_max_length
        if trunc_kind is not None:
            if model_max_length > LARGE_INTEGER:
                trunc_kind = None
            else:
                max_length = model_max_length
    if pad_kind is not None and pad_id is None:
        raise ValueError(PAD_MESSAGE)
    if trunc_kind and pad_kind and pad_to_multiple_of is not None and max_length is not None \
            and max_length % pad_to_multiple_of:
        raise ValueError(f"Truncation and padding are both activated but truncation length ({max_length}) is not "
                         f"a multiple of pad_to_multiple_of ({pad_to_multiple_of}).")
    return pad_kind, trunc_kind, max_length


def check_call_inputs(text, text_pair, return_tensors, unsupported: dict) -> None:
    """What `tok(...)` refuses before encoding anything, with transformers' messages: unknown arguments,
    tensors other than NumPy's, and text that is not a str or a list of str."""
    if unsupported:
        raise TypeError(f"tokenizer call: unsupported arguments {sorted(unsupported)}")
    if return_tensors not in (None, "np"):
        raise ValueError(f"return_tensors must be None or 'np' (this package is NumPy-only), got {return_tensors!r}")

    def is_text(t):
        return isinstance(t, str) or (isinstance(t, (list, tuple)) and all(isinstance(x, str) for x in t))
    if not is_text(text) or (text_pair is not None and not is_text(text_pair)):
        raise ValueError("text input must be of type `str` (single example) or `list[str]` (batch)")


def text_pairs(text, text_pair) -> list[tuple[str, str | None]]:
    """`tok(...)`'s input as (text, pair or None) rows: one row for a str, one per text for a list.

    >>> text_pairs(["a", "b"], ["c", "d"])
    [('a', 'c'), ('b', 'd')]
    """
    if not isinstance(text, (list, tuple)):
        return [(text, text_pair or None)]
    if isinstance(text_pair, str):
        raise TypeError("when tokenizing batches of text, `text_pair` must be a list or tuple with the same "
                        "length as `text`.")
    if text_pair is not None and len(text) != len(text_pair):
        raise ValueError(f"batch length of `text`: {len(text)} does not match batch length of `text_pair`: "
                         f"{len(text_pair)}.")
    return list(zip(text, text_pair)) if text_pair is not None else [(t, None) for t in text]


def pad_width(rows: list[list[int]], kind: str, max_length: int | None, multiple_of: int | None) -> int:
    """The width `tok(...)` pads to: the longest row ("longest") or max_length ("max_length"), rounded up
    to a multiple of pad_to_multiple_of.

    >>> pad_width([[1, 2, 3], [4]], "longest", None, 4)
    4
    """
    width = max((len(r) for r in rows), default=0) if kind == "longest" else max_length
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    return width


def batch_encoding(fields: dict, return_tensors: str | None, batched: bool) -> BatchEncoding:
    """`tok(...)`'s result from its rows by name (a field left None was not asked for): lists, a text's
    own row for one text (HF keeps "length" a list), or with return_tensors="np" int64 arrays [batch, seq]."""
    out = {}
    for key, value in fields.items():
        if value is None:
            continue
        if return_tensors == "np":
            out[key] = _as_array(value) if key != "length" else np.asarray(value)
        elif not batched and value and isinstance(value[0], list):
            out[key] = value[0]
        else:
            out[key] = value
    return BatchEncoding(out)


def _as_array(rows):
    """int64 [batch, seq]; rows of different lengths give an object array of 1-D arrays, as transformers 5."""
    if len({len(r) for r in rows}) <= 1:
        return np.array(rows, dtype=np.int64).reshape(len(rows), -1)
    arr = np.empty(len(rows), dtype=object)
    arr[:] = [np.asarray(r, dtype=np.int64) for r in rows]
    return arr


# --- chat templates -----------------------------------------------------------------------------------
def cut_after_final_message(rendered: str, final: str) -> str:
    """The rendered chat up to the end of the last message's text (HF's continue_final_message)."""
    if final.strip() not in rendered:
        raise ValueError("continue_final_message is set but the final message does not appear in the chat after "
                         "applying the chat template!")
    at = rendered.rindex(final.strip())
    if rendered[at:at + len(final.lstrip())] == final:
        return rendered[:at + len(final.lstrip())]
    return rendered[:at + len(final.strip())]


# --- saving -------------------------------------------------------------------------------------------
# the files a vocabulary may be read from (transformers: tokenizer.json first, then the slow tokenizers' files)
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def write_file(path: Path, data: bytes | str) -> str:
    """Write text (UTF-8) or bytes through a temporary file and a rename; the path written, as a str."""
    from ..atomic import replacing
    with replacing(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return str(path)


def json_text(obj) -> str:
    """JSON as the tokenizer files are written: indented, UTF-8 kept, a final newline."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _added_entry(t, read: dict | None = None) -> dict:
    """An added token as tokenizer files write it; single_word and normalized, which AddedToken does not
    keep, come from `read` (its entry in the tokenizer.json it was read from) where there is one."""
    read = read or {}
    return {"content": t.content, "lstrip": t.lstrip, "normalized": bool(read.get("normalized", not t.special)),
            "rstrip": t.rstrip, "single_word": bool(read.get("single_word")), "special": t.special}


def vocabulary_file(tok) -> tuple[str, bytes | str]:
    """The file that holds the vocabulary, as (name, content): the tokenizer.model bytes a SentencePiece
    model was read from, else a tokenizer.json (the one it was read from, or a GGUF vocabulary's), its
    added tokens the Tokenizer's own."""
    serialized = getattr(tok.model, "serialized", None)
    if serialized is not None:
        return "tokenizer.model", serialized
    spec = getattr(tok.model, "spec", None)
    spec = spec() if callable(spec) else spec  # a GGUF vocabulary's is made now, not at every load
    if spec is None:
        raise NotImplementedError(f"save_pretrained: {tok.source} was read from no tokenizer.model, tokenizer.json "
                                  "or GGUF file, so there is no vocabulary file to write")
    read = {t.get("content"): t for t in spec.get("added_tokens") or []}
    added = [{"id": t.id, **_added_entry(t, read.get(t.content))} for t in sorted(tok.added_tokens, key=lambda t: t.id)]
    return "tokenizer.json", json_text({**spec, "added_tokens": added})


def tokenizer_config(tok, chat_template_inline: bool = False) -> dict:
    """`tokenizer_config.json` (added_tokens_decoder, BOS/EOS/UNK/PAD, add_bos_token...): the one writer
    of it, for `save_pretrained` and `convert`. `chat_template_inline`: the template goes in this file
    (as converters write it), not in chat_template.jinja beside it (as transformers 5 saves it)."""
    is_sp = getattr(tok.model, "serialized", None) is not None
    named = tok.special_tokens_map
    config = {
        "add_bos_token": tok.add_bos, "add_eos_token": tok.add_eos,
        "added_tokens_decoder": {str(t.id): _added_entry(t) for t in sorted(tok.added_tokens, key=lambda t: t.id)},
        **{f"{n}_token": named.get(f"{n}_token") for n in NAMED_SPECIAL},
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": list(tok.extra_special_tokens),
        "model_max_length": tok.model_max_length,
        "padding_side": tok.padding_side, "truncation_side": tok.truncation_side,
        "tokenizer_class": tok.tokenizer_class or ("LlamaTokenizer" if is_sp else "PreTrainedTokenizerFast"),
    }
    if is_sp:
        config["legacy"] = tok.legacy
    if chat_template_inline and tok.chat_template:
        config["chat_template"] = tok.chat_template
    return config
