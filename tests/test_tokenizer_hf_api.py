"""Hugging Face's tokenizer API on our Tokenizer (tokenizer/hf_api.py), method by method against transformers
loaded from the same files: LlamaTokenizer on Mistral's tokenizer.model, the bundled model's tokenizer and a
SentencePiece model trained here; PreTrainedTokenizerFast on SmolLM2's byte-level tokenizer.json.

Known differences from transformers 5's LlamaTokenizer, left out of the comparisons here and pinned in
test_known_differences_from_transformers_5: after a special token it gives a text that starts with a space no
dummy prefix (" y" -> ▁y), where sentencepiece (and we) give "▁ ▁y" (test_tokenizer.py checks ours against
transformers 4's); it decodes "<s> Hello" where we decode "<s>Hello"; its merges split runs of spaces differently.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinyllama_ref as tl
from realdata import mistral_tokenizer_path, train_sentencepiece
from tinyllama_ref import cli, conversation
from tinyllama_ref.fetch import cache_root
from tinyllama_ref.tokenizer import TokenizerError

transformers = pytest.importorskip("transformers", reason="the HF API is checked against transformers")
pytest.importorskip("sentencepiece", reason="transformers' LlamaTokenizer reads tokenizer.model with sentencepiece")
pytestmark = pytest.mark.live
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])

LLAMA_CONFIG = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": True,
                "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# texts without a space right after a special token (see the module docstring)
CORPUS = ["Hello world", "Hi", "", "a", "In the beginning God created the heaven and the earth.",
          "Ça va? 😀 \t def f(x):", "道可道，非常道。", "x</s>y", "<s>Hello", "numbers 12345 and 3.14",
          "\U00013000 hieroglyph", "tabs\tand\nnewlines\n\n",
          # the last three only to decode (see test_known_differences_from_transformers_5)
          "  two  spaces ", "</s> y", "def f(x):\n    return x"]


def sp_dir(tmp, model_path, **config):
    """A checkpoint directory holding a tokenizer.model and a tokenizer_config.json (LLaMA's settings)."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, tmp / "tokenizer.model")
    (tmp / "tokenizer_config.json").write_text(json.dumps({**LLAMA_CONFIG, **config}))
    return tmp


def pair(directory):
    return tl.load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(str(directory))


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    return sp_dir(tmp_path_factory.mktemp("mistral"), mistral_tokenizer_path())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_spm")
    return sp_dir(out / "ckpt", train_sentencepiece(out, "tiny", 600))


@pytest.fixture(scope="module")
def bundled_dir():
    return cli.default_model_dir()


@pytest.fixture(scope="module")
def smollm2_dir():
    d = cache_root() / "models" / "smollm2"
    if not (d / "tokenizer.json").is_file():
        pytest.skip(f"SmolLM2's converted checkpoint is not cached at {d} (tinyllama-ref fetch smollm2)")
    return d


@pytest.fixture(scope="module")
def loaded():
    return {}  # name -> (ours, transformers'), each read once per module


@pytest.fixture
def cached(request, loaded):
    """name -> (ours, transformers') tokenizers read from the same directory, shared by the tests that do not
    add tokens; the BOS/EOS switches are restored after each test."""
    switches = []

    def get(name):
        if name not in loaded:
            loaded[name] = pair(request.getfixturevalue(f"{name}_dir"))
        switches.extend((tok, tok.add_bos_token, tok.add_eos_token) for tok in loaded[name])
        return loaded[name]
    yield get
    for tok, bos, eos in switches:
        tok.add_bos_token, tok.add_eos_token = bos, eos


@pytest.fixture(params=["mistral", "bundled", "tiny", "smollm2"])
def both(request, cached):
    return cached(request.param)


def as_lists(batch):
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in batch.items()}


# --- special tokens around one text or a pair -------------------------------------------------------------
@pytest.mark.parametrize("add_bos, add_eos", [(True, False), (True, True), (False, True), (False, False)])
def test_special_tokens_around_texts_and_pairs(both, add_bos, add_eos):
    ours, hf = both
    if ours.bos_id is None and add_bos:
        pytest.skip("no BOS token")
    ours.add_bos_token, ours.add_eos_token = add_bos, add_eos
    hf.add_bos_token, hf.add_eos_token = add_bos, add_eos
    for a, b in [("Hello world", "Hi"), ("a", "b"), ("道可道", "x</s>y")]:
        ids_a, ids_b = ours.encode(a, add_bos=False, add_eos=False), ours.encode(b, add_bos=False, add_eos=False)
        want = hf(a, b, return_token_type_ids=True, return_special_tokens_mask=True)
        assert ours.build_inputs_with_special_tokens(ids_a, ids_b) == want["input_ids"]
        assert ours.create_token_type_ids_from_sequences(ids_a, ids_b) == want["token_type_ids"]
        assert ours.get_special_tokens_mask(ids_a, ids_b) == want["special_tokens_mask"]
        assert as_lists(ours(a, b, return_token_type_ids=True, return_special_tokens_mask=True)) == dict(want)
        one = hf(a, return_special_tokens_mask=True)
        assert ours.build_inputs_with_special_tokens(ids_a) == one["input_ids"] == ours.encode(a)
        assert ours.get_special_tokens_mask(ids_a) == one["special_tokens_mask"]
        assert ours.get_special_tokens_mask(one["input_ids"], already_has_special_tokens=True) == \
            hf.get_special_tokens_mask(one["input_ids"], already_has_special_tokens=True)
    with pytest.raises(ValueError, match="already formatted"):
        ours.get_special_tokens_mask([1], [2], already_has_special_tokens=True)


def test_tokens_and_ids_convert_as_in_transformers(both):
    ours, hf = both
    ids = ours.encode("Hello world <s></s>😀 道", add_bos=False)[:12] + [0, 1, 2, len(ours) - 1]
    tokens = hf.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids) == tokens
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == hf.convert_ids_to_tokens(ids, skip_special_tokens=True)
    assert ours.convert_ids_to_tokens(ids[0]) == hf.convert_ids_to_tokens(ids[0])
    assert ours.convert_ids_to_tokens(len(ours)) is None is hf.convert_ids_to_tokens(len(hf))
    unknown = ["zzqqxx-not-a-token", tokens[0]]
    assert ours.convert_tokens_to_ids(tokens + unknown) == hf.convert_tokens_to_ids(tokens + unknown)
    assert ours.convert_tokens_to_ids(unknown[0]) == hf.convert_tokens_to_ids(unknown[0])
    assert ours.convert_tokens_to_ids(None) is None
    assert ours.all_special_ids == hf.all_special_ids and ours.special_tokens_map == hf.special_tokens_map
    assert (len(ours), ours.vocab_size, ours.padding_side) == (len(hf), hf.vocab_size, hf.padding_side)


def test_decode_and_batch_decode(both):
    ours, hf = both
    rows = [ours.encode(t, add_eos=True) for t in CORPUS]
    for skip in (True, False) if not ours.tokenizer_class.startswith("Llama") else (True,):
        # (LlamaTokenizer in transformers 5 writes "<s> Hello" where sentencepiece, transformers 4's
        # LlamaTokenizer and we write "<s>Hello": only skip_special_tokens=True is compared for it)
        assert ours.batch_decode(rows, skip_special_tokens=skip) == hf.batch_decode(rows, skip_special_tokens=skip)
        for r in rows:
            assert ours.decode(r, skip_special_tokens=skip, clean_up_tokenization_spaces=True) == \
                hf.decode(r, skip_special_tokens=skip, clean_up_tokenization_spaces=True)
    assert ours.decode(rows[0][1]) == hf.decode(rows[0][1])
    assert ours.batch_decode(np.array([rows[1], rows[1]]), skip_special_tokens=True) == ["Hi", "Hi"]


# --- __call__: padding and truncation --------------------------------------------------------------------
def test_padding_needs_a_pad_token_as_in_transformers(cached):
    ours, hf = cached("mistral")
    for kwargs in (dict(padding=True), dict(padding="max_length", max_length=4)):
        with pytest.raises(ValueError) as theirs:
            hf(["a", "b c"], **kwargs)
        with pytest.raises(ValueError) as mine:
            ours(["a", "b c"], **kwargs)
        assert str(mine.value) == str(theirs.value)
    assert as_lists(ours(["a", "b c"])) == dict(hf(["a", "b c"]))  # no padding: no pad token needed
    with pytest.raises(ValueError, match="not a valid PaddingStrategy"):
        ours("a", padding="bogus")
    with pytest.raises(ValueError, match="return_tensors must be None or 'np'"):
        ours("a", return_tensors="pt")


# pieces of text and special tokens (no piece starts with a space: see the module docstring)
words = st.text(st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FFF), min_size=1, max_size=12).map(
    lambda s: s.lstrip()).filter(bool)
texts = st.lists(st.one_of(words, words, st.sampled_from(["<s>", "</s>", "<pad>", "<unk>", "<|im_end|>"])),
                 max_size=4).map("".join)
call_args = st.fixed_dictionaries({
    "padding": st.sampled_from([False, True, "longest", "max_length", "do_not_pad"]),
    "truncation": st.sampled_from([None, False, True, "longest_first", "do_not_truncate"]),
    "max_length": st.one_of(st.none(), st.integers(4, 14)),
    "padding_side": st.sampled_from([None, "left", "right"]),
    "pad_to_multiple_of": st.sampled_from([None, None, 4]),
    "return_tensors": st.sampled_from([None, "np"]),
    "add_special_tokens": st.booleans(),
    "return_attention_mask": st.sampled_from([None, True, False]),
    "return_token_type_ids": st.sampled_from([None, True]),
    "return_special_tokens_mask": st.booleans(),
    "return_length": st.booleans(),
})


def check_call(ours, hf, text, text_pair, kwargs):
    if kwargs["padding"] == "max_length" and kwargs["max_length"] is None:
        kwargs["max_length"] = 8  # else both pad to model_max_length (8192 for SmolLM2)
    if kwargs["max_length"] and kwargs["pad_to_multiple_of"] and kwargs["max_length"] % 4:
        kwargs["max_length"] += 4 - kwargs["max_length"] % 4
    try:
        want = hf(text, text_pair, **kwargs)
    except Exception as e:  # noqa: BLE001 - whatever transformers refuses, we refuse the same way
        with pytest.raises(type(e)):
            ours(text, text_pair, **kwargs)
        return
    got = ours(text, text_pair, **kwargs)
    assert list(got) == list(want)
    for key in want:
        if isinstance(want[key], np.ndarray):
            assert got[key].shape == want[key].shape and got[key].dtype == want[key].dtype, key
            if want[key].dtype == object:  # rows of different lengths (no padding)
                assert [r.tolist() for r in got[key]] == [r.tolist() for r in want[key]], key
                continue
        assert (got[key].tolist() if isinstance(got[key], np.ndarray) else got[key]) == \
            (want[key].tolist() if isinstance(want[key], np.ndarray) else want[key]), key


@pytest.fixture(scope="module")
def padded(mistral_dir, smollm2_dir, tmp_path_factory):
    """Mistral's tokenizer with <pad> added (both sides), and SmolLM2's (which has a pad token)."""
    class Pairs(dict):
        def __repr__(self):  # hypothesis prints its arguments: not the whole vocabularies
            return "<padded tokenizers>"
    out = Pairs()
    ours, hf = pair(mistral_dir)
    assert ours.add_special_tokens({"pad_token": "<pad>"}) == hf.add_special_tokens({"pad_token": "<pad>"}) == 1
    out["mistral"] = (ours, hf)
    out["smollm2"] = pair(smollm2_dir)
    return out


@pytest.mark.parametrize("name", ["mistral", "smollm2"])
@SETTINGS
@given(batch=st.lists(texts, min_size=1, max_size=4), pairs=st.none() | st.lists(texts, min_size=4, max_size=4),
       kwargs=call_args)
def test_call_batches_match_transformers(padded, name, batch, pairs, kwargs):
    ours, hf = padded[name]
    check_call(ours, hf, batch, None if pairs is None else pairs[:len(batch)], kwargs)


@pytest.mark.parametrize("name", ["mistral", "smollm2"])
@SETTINGS
@given(text=texts, text_pair=st.none() | texts, kwargs=call_args)
def test_call_one_text_matches_transformers(padded, name, text, text_pair, kwargs):
    ours, hf = padded[name]
    check_call(ours, hf, text, text_pair, kwargs)


def test_call_with_bos_and_eos_and_truncation(cached):
    ours, hf = cached("mistral")
    for tok in (ours, hf):
        tok.add_bos_token = tok.add_eos_token = True
    try:
        for side in ("right", "left"):
            ours.truncation_side = hf.truncation_side = side
            for args in [("x y z",), ("x y z", "q"), ("a b c d e f g", "p q r s"), ("a b c d e f g", "p")]:
                for max_length in (0, 1, 2, 3, 4, 5, 7, 20):  # below 2 (4 for a pair) nothing is cut, as in tokenizers
                    assert as_lists(ours(*args, truncation=True, max_length=max_length)) == \
                        dict(hf(*args, truncation=True, max_length=max_length)), (side, args, max_length)
    finally:
        ours.truncation_side = hf.truncation_side = "right"


def test_pad_token_set_to_eos_as_users_do(cached):
    ours, hf = cached("mistral")
    try:
        ours.pad_token = hf.pad_token = "</s>"
        assert (ours.pad_token, ours.pad_token_id) == (hf.pad_token, hf.pad_token_id) == ("</s>", 2)
        assert as_lists(ours(["a b", "c"], padding=True)) == dict(hf(["a b", "c"], padding=True))
    finally:
        ours.pad_token = hf.pad_token = None
    assert ours.pad_token_id is None


def test_known_differences_from_transformers_5(cached):
    """Pinned so that a change on either side shows: sentencepiece's (and transformers 4's) behaviour here."""
    ours, hf = cached("mistral")
    assert ours.encode("</s> y") == [1, 2, 28705, 337] and hf.encode("</s> y") == [1, 2, 337]
    assert ours.decode([1, 22557]) == "<s>Hello" and hf.decode([1, 22557]) == "<s> Hello"
    # transformers converts the SentencePiece scores to ranked merges, which split runs of spaces otherwise
    code = "def f(x):\n    return x"
    assert ours.tokenize(code)[-3:] == ["▁▁▁", "▁return", "▁x"] and hf.tokenize(code)[-3:] == ["▁▁▁▁", "return", "▁x"]
    sp = pytest.importorskip("sentencepiece").SentencePieceProcessor(model_file=str(mistral_tokenizer_path()))
    assert ours.encode(code, add_special_tokens=False) == sp.encode(code)
    assert ours.decode([1, 22557], skip_special_tokens=True) == hf.decode([1, 22557], skip_special_tokens=True)


def test_get_vocab_and_encode_without_special_tokens(both):
    ours, hf = both
    assert ours.get_vocab() == hf.get_vocab()
    for text in CORPUS[:-3]:
        assert ours.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)


def test_bos_and_eos_switches_change_encode(cached):
    ours, hf = cached("mistral")
    for bos, eos in [(False, True), (True, True), (False, False)]:
        ours.add_bos_token, ours.add_eos_token = bos, eos
        hf.add_bos_token, hf.add_eos_token = bos, eos
        assert ours.encode("Hello world") == hf.encode("Hello world") == ours("Hello world")["input_ids"]
        assert (ours.add_bos, ours.add_eos) == (bos, eos)


# --- adding tokens ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mistral", "smollm2"])
def test_adding_tokens_as_transformers(name, request):
    ours, hf = pair(request.getfixturevalue(f"{name}_dir"))
    def calls(tok):
        return [tok.add_special_tokens({"pad_token": "<pad>"}), tok.add_special_tokens({"pad_token": "<pad>"}),
                tok.add_special_tokens({"pad_token": tok.eos_token}), tok.add_tokens(["hello_new", "<extra_tok>"]),
                tok.add_tokens(["hello_new"]), tok.add_tokens(["Hello"]), tok.add_tokens([]), len(tok),
                tok.pad_token, tok.pad_token_id]
    assert calls(ours) == calls(hf)
    text = "a hello_new,b<pad>c<extra_tok>Hello"
    assert ours.encode(text) == hf.encode(text)
    assert ours.tokenize(text) == hf.tokenize(text)  # the added tokens past the vocabulary included
    ids = ours.encode(text)
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    with pytest.raises(ValueError, match="sep_token"):
        ours.add_special_tokens({"sep_token": "<sep>"})
    with pytest.raises(ValueError, match="add_special_tokens"):
        ours.pad_token = "<never-added>"


# --- chat templates ---------------------------------------------------------------------------------------
CHAT = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke"}]


def test_apply_chat_template_as_transformers_5(cached):
    ours, hf = cached("smollm2")
    for kwargs in [dict(tokenize=False), dict(tokenize=False, add_generation_prompt=True), dict(),
                   dict(add_generation_prompt=True, return_tensors="np"), dict(return_dict=False),
                   dict(tokenize=False, continue_final_message=True), dict(continue_final_message=True),
                   dict(max_length=10, truncation=True), dict(max_length=10, truncation=True, return_dict=False)]:
        want = hf.apply_chat_template(CHAT, **kwargs)
        got = ours.apply_chat_template(CHAT, **kwargs)
        assert type(got).__name__ == type(want).__name__, kwargs
        if isinstance(want, (str, list)):
            assert got == want, kwargs
        else:
            assert as_lists(got) == as_lists(want), kwargs
    batch = [CHAT, CHAT[:1]]
    assert as_lists(ours.apply_chat_template(batch, padding=True)) == as_lists(hf.apply_chat_template(batch, padding=True))
    assert ours.apply_chat_template(batch, tokenize=False) == hf.apply_chat_template(batch, tokenize=False)
    with pytest.raises(ValueError, match="empty conversation"):
        ours.apply_chat_template([])
    # the module function keeps its own default (a generation prompt) for the chat loop
    assert conversation.apply_chat_template(ours, CHAT, tokenize=False) == \
        hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


# --- saving -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mistral", "tiny"])
def test_save_vocabulary_gives_back_the_same_bytes(cached, name, request, tmp_path):
    ours, hf = cached(name)
    (path,) = ours.save_vocabulary(tmp_path, filename_prefix="p")
    assert path == str(tmp_path / "p-tokenizer.model") == hf.save_vocabulary(str(tmp_path), filename_prefix="p")[0]
    original = request.getfixturevalue(f"{name}_dir") / "tokenizer.model"
    assert (tmp_path / "p-tokenizer.model").read_bytes() == original.read_bytes()
    with pytest.raises(NotADirectoryError):
        ours.save_vocabulary(tmp_path / "missing")


def test_save_vocabulary_of_a_byte_level_bpe(cached, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    ours, _ = cached("smollm2")
    vocab, merges = ours.save_vocabulary(tmp_path)
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab, merges))
    assert bpe.get_vocab() == {p: i for i, p in enumerate(ours.model.pieces)}
    assert [bpe.id_to_token(i) for i in (0, 100, 49151)] == [ours.model.pieces[i] for i in (0, 100, 49151)]


ROUND_TRIP = CORPUS + ["<pad> padded", "a<pad>b", "x hello_new", "<|im_start|>user\nHi<|im_end|>"]


@pytest.mark.parametrize("name", ["mistral", "bundled", "tiny", "smollm2"])
def test_save_pretrained_round_trips_through_transformers_and_us(name, request, tmp_path):
    src = request.getfixturevalue(f"{name}_dir")
    ours, hf = pair(src)
    for tok in (ours, hf):
        tok.add_special_tokens({"pad_token": "<pad>"})
        tok.add_tokens(["hello_new"])
        tok.chat_template = tok.chat_template or "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    files = ours.save_pretrained(tmp_path / "saved")
    assert {p.rsplit("/", 1)[1] for p in files} >= {"tokenizer_config.json", "special_tokens_map.json",
                                                     "chat_template.jinja"}
    assert not list((tmp_path / "saved").glob(".*.tmp"))  # written through temporary files, none left
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    again = tl.load_tokenizer(tmp_path / "saved")
    for text in ROUND_TRIP:
        assert theirs.encode(text) == hf.encode(text), text
        assert again.encode(text) == ours.encode(text), text
    for tok in (theirs, again):
        assert (len(tok), tok.pad_token, tok.pad_token_id, tok.add_bos_token, tok.padding_side) == \
            (len(hf), "<pad>", hf.pad_token_id, hf.add_bos_token, hf.padding_side)
        assert tok.apply_chat_template(CHAT, tokenize=False) == hf.apply_chat_template(CHAT, tokenize=False)
    assert as_lists(again(["a", "b c d"], padding=True)) == dict(theirs(["a", "b c d"], padding=True))
    if name != "smollm2":
        assert (tmp_path / "saved" / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()


def test_added_tokens_past_the_vocabulary_extend_it_when_loaded(mistral_dir, tmp_path):
    d = sp_dir(tmp_path / "ok", mistral_dir / "tokenizer.model", pad_token="<pad>", added_tokens_decoder={
        "32000": {"content": "<pad>", "special": True}, "32001": {"content": "<tool>", "special": False}})
    ours, hf = pair(d)
    assert (len(ours), ours.pad_token_id, ours.vocab_size) == (len(hf), hf.pad_token_id, hf.vocab_size) == \
        (32002, 32000, 32000)
    assert ours.encode("a<tool>b<pad>") == hf.encode("a<tool>b<pad>")
    gap = sp_dir(tmp_path / "gap", mistral_dir / "tokenizer.model",
                 added_tokens_decoder={"32005": {"content": "<far>", "special": True}})
    with pytest.raises(TokenizerError, match=r"gap: added_tokens_decoder: .*must take the ids 32000, 32001"):
        tl.load_tokenizer(gap)


GGUF_TEXTS = ["Hello world", "In the beginning God created the heaven and the earth.", "Ça va? 😀 \t def f(x):",
              "道可道，非常道。", "numbers 12345 and 3.14", "tabs\tand\nnewlines\n\n", "  two  spaces "]


@pytest.mark.parametrize("which", ["llama-spm", "llama-bpe", "smollm2"])
def test_a_gguf_vocabulary_saves_and_loads_in_transformers(tmp_path, which):
    """SentencePiece-style (LLaMA's) and byte-level (Llama 3's, SmolLM2's) GGUF vocabularies: save_pretrained
    writes a directory that AutoTokenizer and load_tokenizer both read back to the ids the .gguf gives us,
    which are llama.cpp's own ids on its test strings."""
    from pathlib import Path

    from realdata import llama_cpp_vocab_path, smollm2_gguf_path
    path = smollm2_gguf_path() if which == "smollm2" else llama_cpp_vocab_path(which)
    texts = GGUF_TEXTS
    if which != "smollm2":  # llama.cpp's expected ids (.out, without BOS) for its test strings (.inp)
        texts = Path(str(path) + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
        expected = Path(str(path) + ".out").read_text(encoding="utf-8").split("\n")
    ours = tl.load_tokenizer(path)
    files = ours.save_pretrained(tmp_path / "out")
    assert {f.rsplit("/", 1)[1] for f in files} >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    theirs, reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "out"), tl.load_tokenizer(tmp_path / "out")
    for n, text in enumerate(texts):
        ids = ours.encode(text)
        assert theirs(text)["input_ids"] == reloaded.encode(text) == ids, repr(text)
        if which != "smollm2":
            assert ours.encode(text, add_bos=False) == [int(i) for i in expected[n].split()], repr(text)
    assert (theirs.bos_token_id, theirs.eos_token_id) == (ours.bos_id, ours.eos_id)
    if which == "llama-spm":  # no SentencePiece bytes to write as a tokenizer.model: the vocabulary is a tokenizer.json
        with pytest.raises(NotImplementedError, match="no SentencePiece bytes"):
            ours.save_vocabulary(tmp_path)
