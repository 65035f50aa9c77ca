"""Byte-level BPE (SmolLM2 from GGUF, Llama-3's vocabulary) and tokenizer.json loading, against the
`tokenizers` library and transformers; SmolLM2's ChatML template against transformers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realdata import llama_cpp_vocab_path, mistral_tokenizer_path, smollm2_gguf_path, training_corpus
from tinyllama_ref.conversation import apply_chat_template
from tinyllama_ref.tokenizer import load_tokenizer
from tinyllama_ref.tokenizer.hf_bpe import bytes_to_unicode

pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CORPUS = training_corpus(60_000, seed=11)
snippets = st.builds(lambda i, n: CORPUS[i:i + n], st.integers(0, len(CORPUS) - 1), st.integers(0, 200))
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
specials = st.sampled_from(["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "\n", "  ", "123", "'ll"])
mixed = st.lists(st.one_of(snippets, any_text, specials), max_size=6).map("".join)


@pytest.fixture(scope="session")
def smollm2():
    """(our tokenizer from the GGUF, transformers' tokenizer from the same GGUF)."""
    transformers = pytest.importorskip("transformers")
    path = smollm2_gguf_path()
    hf = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return load_tokenizer(path), hf


@pytest.fixture(scope="session")
def smollm2_original(smollm2, tmp_path_factory):
    """SmolLM2's tokenizer.json as published (digits split one by one before GPT-2's regex; transformers'
    GGUF loader leaves the digit split out), as a `tokenizers` object and the file."""
    spec = json.loads(smollm2[1].backend_tokenizer.to_str())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    path = tmp_path_factory.mktemp("smollm2") / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return tokenizers.Tokenizer.from_file(str(path)), path


@pytest.mark.live
@SETTINGS
@given(text=mixed.filter(lambda s: not regex.search(r"\p{N}", s)))  # \p{N}: what the digit split cuts ('¼' too)
def test_smollm2_gguf_matches_transformers(smollm2, text):
    ours, hf = smollm2
    ids = hf.encode(text, add_special_tokens=False)
    assert ours.encode(text) == ids  # add_bos_token is false for SmolLM2
    assert ours.decode(ids) == hf.decode(ids)


@pytest.mark.live
@SETTINGS
@given(text=mixed)
def test_smollm2_gguf_matches_original_pretokenizer(smollm2, smollm2_original, text):
    # digits included: llama.cpp's "smollm" pre-tokenizer = SmolLM2's own Digits + ByteLevel
    ours, _ = smollm2
    assert ours.encode(text) == smollm2_original[0].encode(text, add_special_tokens=False).ids


@pytest.mark.live
@SETTINGS
@given(text=mixed)
def test_tokenizer_json_byte_level_matches_tokenizers(smollm2_original, text):
    hf, path = smollm2_original
    ours = _load_json(path)
    ids = hf.encode(text, add_special_tokens=False).ids
    assert ours.encode(text) == ids
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)


_json_cache: dict = {}


def _load_json(path):
    if path not in _json_cache:
        _json_cache[path] = load_tokenizer(path)
    return _json_cache[path]


@pytest.fixture(scope="session")
def llama_json(tmp_path_factory):
    """tokenizer.json files that transformers converts from Mistral's tokenizer.model, legacy=True and False."""
    transformers = pytest.importorskip("transformers")
    src = tmp_path_factory.mktemp("mistral_model")
    shutil.copy(mistral_tokenizer_path(), src / "tokenizer.model")
    out = {}
    for legacy in (True, False):
        d = tmp_path_factory.mktemp(f"json_{legacy}")
        transformers.LlamaTokenizer.from_pretrained(str(src), legacy=legacy).save_pretrained(str(d))
        out[legacy] = (load_tokenizer(d / "tokenizer.json"), tokenizers.Tokenizer.from_file(str(d / "tokenizer.json")))
    return out


@pytest.mark.live
@pytest.mark.parametrize("legacy", [True, False])
@SETTINGS
@given(text=mixed, ids=st.lists(st.integers(0, 31999), max_size=12))
def test_tokenizer_json_sentencepiece_style_matches_tokenizers(llama_json, legacy, text, ids):
    ours, hf = llama_json[legacy]
    assert ours.encode(text, add_bos=False) == hf.encode(text, add_special_tokens=False).ids
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_llama3_vocab_matches_llama_cpp_test_vectors():
    vocab = llama_cpp_vocab_path("llama-bpe")
    tok = load_tokenizer(vocab)
    inputs = Path(str(vocab) + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = Path(str(vocab) + ".out").read_text(encoding="utf-8").split("\n")
    assert len(inputs) > 40
    for text, expected in zip(inputs, outputs):
        assert tok.encode(text, add_bos=False) == [int(x) for x in expected.split()], text


@pytest.mark.live
@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2 = ?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Écris 🌸 <|im_end|> x"}],
])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_chat_template_matches_transformers(smollm2, messages, add_generation_prompt):
    ours, hf = smollm2
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert apply_chat_template(ours, messages, add_generation_prompt, tokenize=False) == text
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                 return_dict=False)
    assert apply_chat_template(ours, messages, add_generation_prompt) == list(ids)


def test_gguf_metadata_fields(smollm2):
    ours, _ = smollm2
    assert (ours.bos_id, ours.eos_id, ours.unk_id, ours.pad_id, ours.add_bos) == (1, 2, 0, 2, False)
    assert ours.chat_template.startswith("{% for message in messages %}")
    assert ours.encode("<|im_start|>user") == [1, 4093]


def test_bytes_to_unicode_is_a_bijection_onto_printable_characters():
    m = bytes_to_unicode()
    assert len(set(m.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in m.values())


def test_unsupported_tokenizer_json_is_refused_clearly(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(NotImplementedError, match="WordPiece"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="tokenizer.json is not valid JSON"):
        load_tokenizer(tmp_path)
