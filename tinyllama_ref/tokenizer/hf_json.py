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
    if not isinstance(spec, dict):
        raise TokenizerError(f"{source}: expected a JSON object, got {type(spec).__name__}")
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
    added = spec.get("added_tokens") or []
    if not isinstance(added, list):
        raise TokenizerError(f"{source}: field 'added_tokens' must be a list, got {type(added).__name__}")
    for n, t in enumerate(added):
        if not isinstance(t, dict) or type(t.get("id")) is not int or t["id"] < 0 \
                or not isinstance(t.get("content"), str):
            raise TokenizerError(f"{source}: added_tokens[{n}] needs a non-negative integer 'id' and a string "
                                 f"'content', got {json.dumps(t)[:80]}")
    top = max([*vocab.values(), *(t["id"] for t in added)])
    if top >= len(vocab) + len(added):  # some id below it has no token: say so before allocating the table
        raise TokenizerError(f"{source}: token ids go up to {top}, but 'model.vocab' and 'added_tokens' hold "
                             f"only {len(vocab) + len(added)} tokens")
    # the model's vocabulary; added tokens past it extend the Tokenizer (as HF's len(tokenizer) counts them),
    # which checks that they take the next ids in turn
    size = max(vocab.values()) + 1
    pieces = [""] * size
    for token, i in vocab.items():
        pieces[i] = token
    for t in added:
        if t["id"] < size:
            pieces[t["id"]] = pieces[t["id"]] or t["content"]
    if "" in pieces:
        raise TokenizerError(f"{source}: token id {pieces.index('')} has no token in the vocabulary")
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    kw = dict(byte_fallback=bool(model.get("byte_fallback")), fuse_unk=bool(model.get("fuse_unk")),
              ignore_merges=bool(model.get("ignore_merges")), normalizer=[], decoder=[], split_patterns=[])
    unk = model.get("unk_token")
    if unk is not None:
        if unk not in vocab:
            raise TokenizerError(f"{source}: unk_token {unk!r} is not in the vocabulary")
        kw["unk_id"] = vocab[unk]
    for step in _steps(spec.get("normalizer"), "normalizer", source):
        if step["type"] == "Prepend":
            kw["normalizer"].append(("prepend", step["prepend"]))
        elif step["type"] == "Replace" and "String" in step.get("pattern", {}):
            kw["normalizer"].append(("replace", step["pattern"]["String"], step["content"]))
        else:
            _unsupported("normalizer", step, source)
    for step in _steps(spec.get("pre_tokenizer"), "pre_tokenizer", source):
        if step["type"] == "Metaspace":
            kw["metaspace"] = step.get("replacement", "\u2581")
            scheme = step.get("prepend_scheme") or ("always" if step.get("add_prefix_space", True) else "never")
            kw["metaspace_prepend"], kw["metaspace_split"] = scheme, bool(step.get("split", True))
        elif step["type"] == "ByteLevel":
            kw["byte_level"] = True
            kw["add_prefix_space"] = bool(step.get("add_prefix_space"))
            if step.get("use_regex", True):
                kw["split_patterns"].append(GPT2_PATTERN)
        elif step["type"] == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            kw["split_patterns"].append(_pattern(step, "pre_tokenizer", source))
        elif step["type"] == "Digits":
            kw["split_patterns"].append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        else:
            _unsupported("pre_tokenizer", step, source)
    for step in _steps(spec.get("decoder"), "decoder", source):
        t = step["type"]
        if t == "ByteLevel":
            kw["decoder"].append(("byte_level",))
        elif t == "ByteFallback":
            kw["decoder"].append(("byte_fallback",))
        elif t == "Fuse":
            kw["decoder"].append(("fuse",))
        elif t == "Replace" and "String" in step.get("pattern", {}):
            kw["decoder"].append(("replace", step["pattern"]["String"], step["content"]))
        elif t == "Strip":
            kw["decoder"].append(("strip", step["content"], step.get("start", 0), step.get("stop", 0)))
        elif t == "Metaspace":
            scheme = step.get("prepend_scheme") or ("always" if step.get("add_prefix_space", True) else "never")
            kw["decoder"].append(("metaspace", step.get("replacement", "\u2581"), scheme))
        else:
            _unsupported("decoder", step, source)
    bpe = MergesBPE(pieces=pieces, merges=merges, source=source, spec=spec, **kw)

    added_tokens = []
    for t in added:
        if t.get("single_word") or t.get("normalized") and kw["normalizer"]:
            raise NotImplementedError(f"{source}: added token {t['content']!r} with single_word or normalized=true "
                                      "is not supported")
        added_tokens.append(AddedToken(t["content"], t["id"], special=bool(t.get("special")),
                                       lstrip=bool(t.get("lstrip")), rstrip=bool(t.get("rstrip"))))
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
    return Tokenizer(model=bpe, added_tokens=added_tokens, bos_id=bos_id, eos_id=eos_id, unk_id=kw.get("unk_id"),
                     add_bos=add_bos, add_eos=add_eos, legacy=True, source=source)
