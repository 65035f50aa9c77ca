"""Our SentencePiece BPE against the `sentencepiece` library: same ids, same decoded text.

Models are trained here with SentencePieceTrainer on a mixed corpus (English, Chinese, code with
runs of spaces and tabs, emoji), with byte fallback on and off, several vocabulary sizes, NFKC
normalization, and user-defined/control symbols; plus Mistral-7B's real tokenizer.model.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realdata import mistral_tokenizer_path, train_sentencepiece, training_corpus
from tinyllama_ref.tokenizer import load_tokenizer
from tinyllama_ref.tokenizer.bpe import bpe_merge, decode_utf8_per_byte, merge_by_heap, merge_by_scan
from tinyllama_ref.formats.protobuf import ProtobufError, iter_fields, parse_message, read_varint
from tinyllama_ref.tokenizer.sp_model import load_sentencepiece_model, sentencepiece_model_from_bytes
from tinyllama_ref.tokenizer.sp_normalizer import normalize, normalize_by_rules

spm = pytest.importorskip("sentencepiece")

MODELS = {  # name -> (vocab size, trainer options beyond LLaMA's settings)
    "bf500": (500, dict(character_coverage=0.98)),  # rare characters fall back to bytes
    "bf1000": (1000, {}),
    "bf4000": (4000, {}),
    "nobf500": (500, dict(byte_fallback=False)),
    "nfkc2000": (2000, dict(normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True)),
    "userdef800": (800, dict(user_defined_symbols=["<tool>", "foo bar", "\u2581\u2581x"], control_symbols=["<ctl>"])),
    "nodummy600": (600, dict(add_dummy_prefix=False, byte_fallback=False)),
}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """name -> (path, our model, sentencepiece processor), trained once per session (~3 s in all)."""
    out = tmp_path_factory.mktemp("spm")
    models = {}
    for name, (vocab_size, options) in MODELS.items():
        path = train_sentencepiece(out, name, vocab_size, **options)
        models[name] = (path, load_sentencepiece_model(path), spm.SentencePieceProcessor(model_file=str(path)))
    return models


@pytest.fixture(scope="session")
def mistral():
    path = mistral_tokenizer_path()
    return path, load_sentencepiece_model(path), spm.SentencePieceProcessor(model_file=str(path))


CORPUS = training_corpus(60_000, seed=7)
WHITESPACE = st.sampled_from([" ", "  ", "   ", "\t", "\t\t", "\n", "\r\n", "\u3000", "\u00a0", "\u2581", " \t "])
snippets = st.builds(lambda i, n: CORPUS[i:i + n], st.integers(0, len(CORPUS) - 1), st.integers(0, 200))
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)  # any unicode but lone surrogates
controls = st.text(st.characters(max_codepoint=0x9F, blacklist_categories=("Cs",)), max_size=20)
rare = st.text(st.characters(min_codepoint=0x1F000, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)), max_size=10)
mixed = st.lists(st.one_of(snippets, any_text, WHITESPACE, controls, rare), max_size=6).map("".join)


def assert_same(model, sp, text):
    ids = sp.encode(text)
    assert model.encode(text) == ids, text
    decoded = sp.decode(ids)
    assert model.decode(ids) == decoded, text
    if decoded == text:  # round trip wherever sentencepiece round-trips
        assert model.decode(model.encode(text)) == text


@pytest.mark.parametrize("name", MODELS)
@SETTINGS
@given(text=mixed)
def test_encode_decode_match_sentencepiece(trained, name, text):
    _, model, sp = trained[name]
    assert_same(model, sp, text)


@pytest.mark.parametrize("name", MODELS)
def test_corpus_lines_match_sentencepiece(trained, name):
    _, model, sp = trained[name]
    lines = CORPUS.splitlines()[:400] + [CORPUS[:5000], "<tool>x foo bar  \u2581\u2581x <ctl>", "  lead  and trail  "]
    for line in lines:
        assert_same(model, sp, line)


@SETTINGS
@given(text=mixed)
def test_mistral_matches_sentencepiece(mistral, text):
    _, model, sp = mistral
    assert_same(model, sp, text)


@pytest.mark.parametrize("name", ["bf1000", "nobf500", "nfkc2000", "userdef800"])
@SETTINGS
@given(data=st.data())
def test_decode_any_ids_matches_sentencepiece(trained, name, data):
    # random ids: byte pieces in any order (invalid UTF-8), control pieces, <unk> anywhere
    _, model, sp = trained[name]
    n = len(model.pieces)
    ids = data.draw(st.lists(st.one_of(st.integers(0, n - 1), st.integers(0, min(n - 1, 270))), max_size=16))
    assert model.decode(ids) == sp.decode(ids)


@pytest.mark.parametrize("name", ["bf1000", "nodummy600", "userdef800"])
@SETTINGS
@given(text=mixed)
def test_fast_normalizer_equals_rule_by_rule(trained, name, text):
    # identity models take a fast path; the step-for-step path must agree with it
    spec = trained[name][1].normalizer
    assert normalize(spec, text) == normalize_by_rules(spec, text)


def test_model_settings_read_from_proto(trained, mistral):
    _, model, _ = mistral
    assert (len(model.pieces), model.unk_id, model.bos_id, model.eos_id, model.pad_id) == (32000, 0, 1, 2, None)
    assert model.byte_fallback and model.normalizer.charsmap is None
    assert model.normalizer.add_dummy_prefix and not model.normalizer.remove_extra_whitespaces
    assert model.pieces[3] == "<0x00>" and model.byte_ids[0] == 3
    assert trained["nfkc2000"][1].normalizer.charsmap is not None
    assert not trained["nobf500"][1].byte_fallback


def test_work_grows_linearly_on_one_repeated_character(mistral):
    # heap pops count the merge loop's work: at most one pop per initial pair plus two per merge
    _, model, _ = mistral
    for n in (1_000, 10_000, 100_000):
        stats = {}
        ids = model.encode("a" * n, stats=stats)
        assert ids and stats["pops"] <= 3 * n, (n, stats)


@pytest.mark.slow
def test_one_megabyte_of_one_character(mistral):
    _, model, sp = mistral
    stats = {}
    text = "a" * 1_000_000
    assert model.encode(text, stats=stats) == sp.encode(text)
    assert stats["pops"] <= 3 * len(text)


def test_bpe_merge_prefers_best_priority_then_leftmost():
    ranks = {("a", "a"): 0}
    assert bpe_merge(list("aaa"), lambda l, r: ranks.get((l, r))) == ["aa", "a"]
    ranks = {("a", "b"): 1, ("b", "c"): 0, ("a", "bc"): 2}
    assert bpe_merge(list("abc"), lambda l, r: ranks.get((l, r))) == ["abc"]



@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_merge_by_scan_equals_merge_by_heap(data):
    # the short-word loop must merge as the heap does, and ask find_merge the same questions in
    # the same order (UNUSED pieces record their merges there); priorities 0..3 make ties common
    symbols = data.draw(st.lists(st.sampled_from(["a", "b", "c", "ab", "\u2581"]), max_size=14))
    by_pair = data.draw(st.booleans())  # HF ranks are keyed by the pair, SentencePiece's by the merged piece
    pieces = st.text("abc\u2581", min_size=1, max_size=4)
    keys = st.tuples(pieces, pieces) if by_pair else st.text("abc\u2581", min_size=2, max_size=6)
    table = data.draw(st.dictionaries(keys, st.integers(0, 3), max_size=40))

    def logging_find_merge(calls):
        def find_merge(left, right):
            calls.append((left, right))
            return table.get((left, right) if by_pair else left + right)
        return find_merge

    scan_calls, heap_calls = [], []
    scanned = merge_by_scan(symbols, logging_find_merge(scan_calls))
    assert scanned == merge_by_heap(symbols, logging_find_merge(heap_calls))
    assert scan_calls == heap_calls


def test_utf8_decoding_replaces_each_invalid_byte():
    assert decode_utf8_per_byte(b"\xf0\x9f\x98") == "\ufffd" * 3
    assert decode_utf8_per_byte(b"\xed\xa0\x80") == "\ufffd" * 3  # a UTF-16 surrogate is not UTF-8
    assert decode_utf8_per_byte("é😀".encode()) == "é😀"


def test_protobuf_reader():
    assert read_varint(bytes([0xAC, 0x02]), 0) == (300, 2)
    assert list(iter_fields(bytes([0x0D, 0, 0, 0x80, 0x3F]))) == [(1, 5, bytes([0, 0, 0x80, 0x3F]))]
    assert parse_message(bytes([0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
                         {1: ("pad_id", "int32")}) == {"pad_id": -1}
    with pytest.raises(ProtobufError, match="runs past the end"):
        list(iter_fields(bytes([0x0A, 0x05, 0x41])))


# --- errors -------------------------------------------------------------------------------------
def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        load_tokenizer(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        load_tokenizer(tmp_path)


def test_corrupt_file_names_the_file_and_the_problem(tmp_path, mistral):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(mistral[0].read_bytes()[:1000])  # truncated mid-piece
    with pytest.raises(ValueError, match="tokenizer.model is not a valid SentencePiece model"):
        load_tokenizer(bad)
    bad.write_bytes(b"\x00\x01\x02 not a model")
    with pytest.raises(ValueError, match="tokenizer.model"):
        load_tokenizer(bad)


def test_unigram_model_is_refused_clearly(tmp_path):
    train_sentencepiece(tmp_path, "uni", 600, model_type="unigram")
    with pytest.raises(NotImplementedError, match="unigram"):
        load_sentencepiece_model(tmp_path / "uni.model")


def test_decode_rejects_ids_outside_vocabulary(mistral):
    tok = load_tokenizer(mistral[0])
    with pytest.raises(ValueError, match="token id 32000 is outside the vocabulary"):
        tok.decode([1, 32000])
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode([-1])


def test_byte_pieces_without_byte_fallback_are_refused(mistral):
    data = mistral[0].read_bytes()
    flag = bytes([0x98, 0x02, 0x01])  # trainer_spec field 35 (byte_fallback) = true
    assert data.count(flag) == 1
    with pytest.raises(ValueError, match="byte_fallback is off"):
        sentencepiece_model_from_bytes(data.replace(flag, bytes([0x98, 0x02, 0x00])), "edited.model")
