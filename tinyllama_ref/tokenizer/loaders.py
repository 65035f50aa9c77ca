"""Loading a tokenizer: from a checkpoint directory, or from one file of any kind.

    tokenizer.model   SentencePiece (protobuf)          -> sp_model
    tokenizer.json    Hugging Face `tokenizers` format  -> hf_json
    *.gguf            llama.cpp's metadata              -> gguf_vocab

In a directory, tokenizer_config.json and special_tokens_map.json beside the file then set BOS/EOS,
`legacy`, the special tokens and the chat template, as transformers reads them.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..formats.paths import GGUF, HF_DIR, META_DIR, TOKENIZER_JSON, what_path_holds
from .gguf_vocab import tokenizer_from_gguf
from .hf_json import tokenizer_from_json
from .sp_model import CONTROL, UNKNOWN, load_sentencepiece_model
from .tokenizer import AddedToken, Tokenizer, TokenizerError

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer of a checkpoint directory (or a single file).

    In a directory we use tokenizer.model (SentencePiece) when present, else tokenizer.json,
    else a single *.gguf; tokenizer_config.json and special_tokens_map.json beside it set
    add_bos_token / add_eos_token / legacy / special tokens / chat_template.
    """
    path = Path(path)
    if what_path_holds(path, role="tokenizer") not in (HF_DIR, META_DIR):
        return tokenizer_from_file(path)
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            tok = tokenizer_from_file(path / name)
            break
    else:
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            found = ", ".join(p.name for p in sorted(path.iterdir())[:20]) or "nothing"
            raise FileNotFoundError(f"no tokenizer in {path}: expected one of {', '.join(TOKENIZER_FILES)} "
                                    f"or a single .gguf file, found {found}")
        tok = tokenizer_from_file(ggufs[0])
    apply_tokenizer_config(tok, path)
    return tok


def tokenizer_from_file(path) -> Tokenizer:
    """A Tokenizer from one file; the kind is read from the suffix, else from the first bytes."""
    path = Path(path)
    kind = what_path_holds(path, role="tokenizer file")
    if kind in (HF_DIR, META_DIR):
        raise FileNotFoundError(f"cannot read tokenizer file {path}: it is a directory")
    if kind == GGUF:
        return tokenizer_from_gguf(path)
    if kind == TOKENIZER_JSON:
        return tokenizer_from_json(path)
    return tokenizer_from_sentencepiece(load_sentencepiece_model(path))


def tokenizer_from_sentencepiece(model) -> Tokenizer:
    """Wrap a SentencePiece model the way HF's LlamaTokenizer does: BOS on, EOS off, control pieces and
    <unk> matched in text."""
    added = [AddedToken(p, i) for i, (p, t) in enumerate(zip(model.pieces, model.types)) if t in (CONTROL, UNKNOWN)]
    return Tokenizer(model=model, added_tokens=added, bos_id=model.bos_id, eos_id=model.eos_id,
                     unk_id=model.unk_id, pad_id=model.pad_id, add_bos=model.bos_id is not None,
                     add_eos=False, legacy=True, source=model.source, padding_side="left",
                     tokenizer_class="LlamaTokenizer")


def _token_content(value):
    """A special token from tokenizer_config.json: a string, or an AddedToken dict with "content"."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def apply_tokenizer_config(tok: Tokenizer, directory: Path) -> None:
    """Apply tokenizer_config.json, special_tokens_map.json and chat_template.jinja from a checkpoint directory."""
    config = read_tokenizer_config(directory)
    added = _added_tokens(tok, config.get("added_tokens_decoder") or {}, directory)
    _set_named_special_tokens(tok, config, added, directory)
    try:
        tok.set_added_tokens(added.values())
    except TokenizerError as e:
        raise TokenizerError(f"{directory}: added_tokens_decoder: {e}") from None
    _set_options(tok, config)
    template = _chat_template(config, directory)
    if template:
        tok.chat_template = template


def read_tokenizer_config(directory: Path) -> dict:
    """special_tokens_map.json, then tokenizer_config.json over it (the config wins where both say)."""
    config = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        p = directory / name
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep
                raise TokenizerError(f"{p} is not valid JSON: {e}") from None
            if not isinstance(data, dict):
                raise ValueError(f"{p} must hold a JSON object, got {type(data).__name__}")
            config.update(data)
    return config


def _added_tokens(tok: Tokenizer, decoder, directory: Path) -> dict[str, AddedToken]:
    """The tokenizer's added tokens by content, then those of added_tokens_decoder it lacks; ids past
    the vocabulary extend it, as transformers adds them."""
    added = {t.content: t for t in tok.added_tokens}
    if not isinstance(decoder, dict):
        raise TokenizerError(f"{directory}: field 'added_tokens_decoder' must be an object of id -> token")
    for key, value in decoder.items():
        if not (isinstance(key, str) and key.isdigit()) or not isinstance(value, dict):
            raise TokenizerError(f"{directory}: added_tokens_decoder key {key!r} is not a token id, or its value "
                                 f"is not an object")
        content = _token_content(value)
        if content is not None and content not in added:
            added[content] = AddedToken(content, int(key), special=bool(value.get("special", True)),
                                        lstrip=bool(value.get("lstrip", False)), rstrip=bool(value.get("rstrip", False)))
    return added


def _set_named_special_tokens(tok: Tokenizer, config: dict, added: dict[str, AddedToken], directory: Path) -> None:
    """bos_token, eos_token, unk_token, pad_token: each found among the added tokens, else in the vocabulary
    (and then added, as transformers does); null unsets it."""
    for attr in ("bos", "eos", "unk", "pad"):
        if f"{attr}_token" not in config:
            continue
        content = _token_content(config[f"{attr}_token"])
        if content is None:
            setattr(tok, f"{attr}_id", None)
            continue
        i = added[content].id if content in added else tok.piece_to_id(content)
        if i is None:
            raise ValueError(f"{directory}: {attr}_token {content!r} is not in the vocabulary of {tok.source}")
        setattr(tok, f"{attr}_id", i)
        added.setdefault(content, AddedToken(content, i))


def _set_options(tok: Tokenizer, config: dict) -> None:
    """The settings that are plain values: extra special tokens, class, sides, length, BOS/EOS, legacy."""
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if isinstance(extra, list):  # (a dict here names extra tokens by role, as some multimodal checkpoints do)
        tok.extra_special_tokens = [c for c in map(_token_content, extra) if isinstance(c, str)]
    tokenizer_class = config.get("tokenizer_class")
    if isinstance(tokenizer_class, str):
        tok.tokenizer_class = tokenizer_class
        if tokenizer_class.startswith("Llama"):
            tok.padding_side = "left"  # LlamaTokenizer's class default
    for side in ("padding_side", "truncation_side"):
        if config.get(side) in ("left", "right"):
            setattr(tok, side, config[side])
    limit = config.get("model_max_length")
    if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0:  # JSON true is not a length
        tok.model_max_length = int(limit)
    if "add_bos_token" in config:
        tok.add_bos = bool(config["add_bos_token"])
    if "add_eos_token" in config:
        tok.add_eos = bool(config["add_eos_token"])
    if config.get("legacy") is not None:
        tok.legacy = bool(config["legacy"])


def _chat_template(config: dict, directory: Path) -> str | None:
    """chat_template.jinja where there is one, else the config's template (the "default" one of a list)."""
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    return template
