"""Load a Hugging Face `tokenizer.json` (the `tokenizers` format) into a MergesBPE + Tokenizer.

Supported, which covers LLaMA (LlamaTokenizerFast, old and new layouts), SmolLM2 and Llama-3:
  model          BPE (vocab + merges; byte_fallback, fuse_unk, unk_token, ignore_merges)
  normalizer     null, Prepend, Replace (string pattern), Sequence of those
  pre_tokenizer  null, Metaspace, ByteLevel, Split (regex, Isolated), Digits, Sequence of those
  post_processor null, ByteLevel, TemplateProcessing (BOS/EOS around the text)
  decoder        ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence of those
Anything else raises NotImplementedError naming the component, rather than tokenizing differently.
"""
from __future__ import annotations

import json
from pathlib import Path

from .hf_bpe import GPT2_PATTERN, MergesBPE
from .tokenizer import AddedToken, Tokenizer, TokenizerError


def _steps(component, what: str, source: str) -> list[dict]:
    """A component as a flat list of steps (a Sequence is unrolled; null is no step)."""
    if component is None:
        return []
    if not isinstance(component, dict) or not isinstance(component.get("type"), str):
        raise TokenizerError(f"{source}: field {what!r} must be null or an object with a string 'type', "
                             f"got {json.dumps(component)[:120]}")
    if component.get("type") == "Sequence":
        key = next(k for k in ("normalizers", "pretokenizers", "decoders", "processors") if k in component)
        return [s for c in component[key] for s in _steps(c, what, source)]
    return [component]


def _unsupported(what: str, step: dict, source: str):
    raise NotImplementedError(f"{source}: {what} {step.get('type')!r} is not supported "
                              f"({json.dumps(step)[:200]})")


def _pattern(step: dict, what: str, source: str) -> str:
    import re
    pattern = step.get("pattern", {})
    if "Regex" in pattern:
        return pattern["Regex"]
    if "String" in pattern:
        return re.escape(pattern["String"])
    _unsupported(what, step, source)


def tokenizer_from_json(path) -> Tokenizer:
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise FileNotFoundError(f"cannot read {path}: {e.strerror or e}") from e
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep
        raise TokenizerError(f"{path} is not valid JSON: {e}") from None
    try:
        return tokenizer_from_json_dict(spec, str(path))
    except (KeyError, TypeError, AttributeError, IndexError, StopIteration, RecursionError) as e:
        # a field of an unexpected kind that no specific check above caught
        raise TokenizerError(f"{path}: malformed tokenizer.json ({type(e).__name__}: {e})") from None


def tokenizer_from_json_dict(spec: dict, source: str = "<tokenizer.json>") -> Tokenizer:
    """Our Tokenizer from a parsed tokenizer.json: each component read by its own step below, in file order."""
    if not isinstance(spec, dict):
        raise TokenizerError(f"{source}: expected a JSON object, got {type(spec).__name__}")
    model = _bpe_model(spec, source)
    vocab, added = model["vocab"], _added_entries(spec, source)
    pieces = _pieces_by_id(vocab, added, source)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    kw = dict(byte_fallback=bool(model.get("byte_fallback")), fuse_unk=bool(model.get("fuse_unk")),
              ignore_merges=bool(model.get("ignore_merges")))
    unk = model.get("unk_token")
    if unk is not None:
        if unk not in vocab:
            raise TokenizerError(f"{source}: unk_token {unk!r} is not in the vocabulary")
        kw["unk_id"] = vocab[unk]
    kw.update(normalizer=_normalizer(spec, source), **_pre_tokenizer(spec, source), decoder=_decoder(spec, source))
    bpe = MergesBPE(pieces=pieces, merges=merges, source=source, spec=spec, **kw)
    added_tokens = _added_tokens(added, bool(kw["normalizer"]), source)
    add_bos, bos_id, add_eos, eos_id = _bos_eos(spec, source)
    return Tokenizer(model=bpe, added_tokens=added_tokens, bos_id=bos_id, eos_id=eos_id, unk_id=kw.get("unk_id"),
                     add_bos=add_bos, add_eos=add_eos, legacy=True, source=source)


def _bpe_model(spec: dict, source: str) -> dict:
    """The "model" object: a BPE without the options we do not implement, its vocab token -> id."""
    model = spec.get("model") or {}
    if not isinstance(model, dict):
        raise TokenizerError(f"{source}: field 'model' must be an object, got {type(model).__name__}")
    if model.get("type") != "BPE":
        raise NotImplementedError(f"{source}: model type {model.get('type')!r} is not supported (only BPE)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("dropout"):
        raise NotImplementedError(f"{source}: BPE with continuing_subword_prefix, end_of_word_suffix or dropout "
                                  "is not supported")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError(f"{source}: field 'model.vocab' must be a non-empty object of token -> id, "
                             f"got {json.dumps(vocab)[:80]}")
    bad = next(((k, i) for k, i in vocab.items() if type(i) is not int or i < 0), None)
    if bad:
        raise TokenizerError(f"{source}: field 'model.vocab' gives token {bad[0]!r} the id {bad[1]!r}, "
                             f"not a non-negative integer")
    return model


def _added_entries(spec: dict, source: str) -> list[dict]:
    """The "added_tokens" list, each entry with a non-negative integer id and a string content."""
    added = spec.get("added_tokens") or []
    if not isinstance(added, list):
        raise TokenizerError(f"{source}: field 'added_tokens' must be a list, got {type(added).__name__}")
    for n, t in enumerate(added):
        if not isinstance(t, dict) or type(t.get("id")) is not int or t["id"] < 0 \
                or not isinstance(t.get("content"), str):
            raise TokenizerError(f"{source}: added_tokens[{n}] needs a non-negative integer 'id' and a string "
                                 f"'content', got {json.dumps(t)[:80]}")
    return added


def _pieces_by_id(vocab: dict[str, int], added: list[dict], source: str) -> list[str]:
    """The model's vocabulary as a list by id, every id below the largest holding a token."""
    top = max([*vocab.values(), *(t["id"] for t in added)])
    if top >= len(vocab) + len(added):  # some id below it has no token: say so before allocating the table
        raise TokenizerError(f"{source}: token ids go up to {top}, but 'model.vocab' and 'added_tokens' hold "
                             f"only {len(vocab) + len(added)} tokens")
    # the model's vocabulary; added tokens past it extend the Tokenizer (as HF's len(tokenizer) counts them),
    # which checks that they take the next ids in turn
    pieces = [""] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        pieces[i] = token
    for t in added:
        if t["id"] < len(pieces):
            pieces[t["id"]] = pieces[t["id"]] or t["content"]
    if "" in pieces:
        raise TokenizerError(f"{source}: token id {pieces.index('')} has no token in the vocabulary")
    return pieces


def _normalizer(spec: dict, source: str) -> list[tuple]:
    """The normalizer's steps: ("prepend", text) and ("replace", old, new)."""
    steps = []
    for step in _steps(spec.get("normalizer"), "normalizer", source):
        if step["type"] == "Prepend":
            steps.append(("prepend", step["prepend"]))
        elif step["type"] == "Replace" and "String" in step.get("pattern", {}):
            steps.append(("replace", step["pattern"]["String"], step["content"]))
        else:
            _unsupported("normalizer", step, source)
    return steps


def _pre_tokenizer(spec: dict, source: str) -> dict:
    """The pre-tokenizer as MergesBPE's options: Metaspace, ByteLevel, and the regexes that split the text."""
    options: dict = {"split_patterns": []}
    for step in _steps(spec.get("pre_tokenizer"), "pre_tokenizer", source):
        if step["type"] == "Metaspace":
            options["metaspace"] = step.get("replacement", "\u2581")
            scheme = step.get("prepend_scheme") or ("always" if step.get("add_prefix_space", True) else "never")
            options["metaspace_prepend"], options["metaspace_split"] = scheme, bool(step.get("split", True))
        elif step["type"] == "ByteLevel":
            options["byte_level"] = True
            options["add_prefix_space"] = bool(step.get("add_prefix_space"))
            if step.get("use_regex", True):
                options["split_patterns"].append(GPT2_PATTERN)
        elif step["type"] == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            options["split_patterns"].append(_pattern(step, "pre_tokenizer", source))
        elif step["type"] == "Digits":
            options["split_patterns"].append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        else:
            _unsupported("pre_tokenizer", step, source)
    return options


def _decoder(spec: dict, source: str) -> list[tuple]:
    """The decoder's steps, in order, as tuples MergesBPE runs."""
    steps = []
    for step in _steps(spec.get("decoder"), "decoder", source):
        t = step["type"]
        if t in ("ByteLevel", "ByteFallback", "Fuse"):
            steps.append(({"ByteLevel": "byte_level", "ByteFallback": "byte_fallback", "Fuse": "fuse"}[t],))
        elif t == "Replace" and "String" in step.get("pattern", {}):
            steps.append(("replace", step["pattern"]["String"], step["content"]))
        elif t == "Strip":
            steps.append(("strip", step["content"], step.get("start", 0), step.get("stop", 0)))
        elif t == "Metaspace":
            scheme = step.get("prepend_scheme") or ("always" if step.get("add_prefix_space", True) else "never")
            steps.append(("metaspace", step.get("replacement", "\u2581"), scheme))
        else:
            _unsupported("decoder", step, source)
    return steps


def _added_tokens(added: list[dict], normalized_text: bool, source: str) -> list[AddedToken]:
    """The added tokens; single_word, and normalized where there is a normalizer, are not implemented."""
    out = []
    for t in added:
        if t.get("single_word") or t.get("normalized") and normalized_text:
            raise NotImplementedError(f"{source}: added token {t['content']!r} with single_word or normalized=true "
                                      "is not supported")
        out.append(AddedToken(t["content"], t["id"], special=bool(t.get("special")),
                              lstrip=bool(t.get("lstrip")), rstrip=bool(t.get("rstrip"))))
    return out


def _bos_eos(spec: dict, source: str) -> tuple[bool, int | None, bool, int | None]:
    """(add_bos, bos_id, add_eos, eos_id) from a TemplateProcessing post-processor: the special tokens
    just before and just after the text ($A)."""
    add_bos = add_eos = False
    bos_id = eos_id = None
    for step in _steps(spec.get("post_processor"), "post_processor", source):
        if step["type"] == "TemplateProcessing":
            single = step.get("single") or []
            names = [("A" if "Sequence" in s else s["SpecialToken"]["id"]) for s in single]
            if names.count("A") != 1:
                _unsupported("post_processor", step, source)
            a = names.index("A")
            ids_of = {k: v["ids"][0] for k, v in (step.get("special_tokens") or {}).items()}
            missing = [n for n in names if n != "A" and n not in ids_of]
            if missing:
                raise TokenizerError(f"{source}: post_processor TemplateProcessing uses {missing[0]!r}, "
                                     f"which its 'special_tokens' does not define")
            if a == 1:
                add_bos, bos_id = True, ids_of[names[0]]
            if a == len(names) - 2:
                add_eos, eos_id = True, ids_of[names[-1]]
            if a > 1 or a < len(names) - 2:
                _unsupported("post_processor", step, source)
        elif step["type"] != "ByteLevel":
            _unsupported("post_processor", step, source)
    return add_bos, bos_id, add_eos, eos_id
