"""The Tokenizer front object: special tokens in text (HF legacy=True/False), BOS/EOS, batching,
checkpoint directories, and LLaMA's own vocabulary (from llama.cpp's vocab-only GGUF)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from realdata import llama_cpp_vocab_path, mistral_tokenizer_path
from tinyllama_ref.tokenizer import Tokenizer, load_tokenizer

spm = pytest.importorskip("sentencepiece")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# a Python with transformers 4.57 (the last with the sentencepiece-based LlamaTokenizer); tools/make_golden.py
# uses the same variable
VENV457 = Path(os.environ.get("GOLDEN_OPENLLAMA_PYTHON", "/opt/venv457/bin/python"))


@pytest.fixture(scope="session")
def mistral_tok():
    return load_tokenizer(mistral_tokenizer_path())


@pytest.fixture(scope="session")
def llama_tok():
    return load_tokenizer(llama_cpp_vocab_path("llama-spm"))


@pytest.fixture(scope="session")
def llama_model_file(llama_tok, tmp_path_factory):
    """LLaMA's tokenizer.model rebuilt from the GGUF vocabulary with LLaMA's trainer and normalizer settings."""
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    model = llama_tok.model
    proto = pb.ModelProto()
    for piece, score, kind in zip(model.pieces, model.scores, model.types):
        proto.pieces.add(piece=piece, score=score, type=kind)
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(model.pieces)
    proto.trainer_spec.byte_fallback = True
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    path = tmp_path_factory.mktemp("llama") / "tokenizer.model"
    path.write_bytes(proto.SerializeToString())
    return path


# --- LLaMA's vocabulary -----------------------------------------------------------------------------
def test_llama_hello_special_token_legacy_and_not(llama_tok):
    # the example of the Llama-2 docs (HF LlamaTokenizer)
    llama_tok.legacy = True
    assert llama_tok.encode("Hello <s>.") == [1, 15043, 29871, 1, 869]
    llama_tok.legacy = False
    assert llama_tok.encode("Hello <s>.") == [1, 15043, 29871, 1, 29889]
    llama_tok.legacy = True


def test_llama_matches_llama_cpp_test_vectors(llama_tok):
    vocab = llama_cpp_vocab_path("llama-spm")
    inputs = Path(str(vocab) + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = Path(str(vocab) + ".out").read_text(encoding="utf-8").split("\n")
    assert len(inputs) > 40
    for text, expected in zip(inputs, outputs):
        assert llama_tok.encode(text, add_bos=False) == [int(x) for x in expected.split()], text


@SETTINGS
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_llama_matches_sentencepiece(llama_tok, llama_model_file, text):
    sp = spm.SentencePieceProcessor(model_file=str(llama_model_file))
    ids = sp.encode(text)
    assert llama_tok.encode(text, add_bos=False, split_special_tokens=True) == ids
    assert llama_tok.model.decode(ids) == sp.decode(ids)


def test_llama_model_file_loads_identically(llama_tok, llama_model_file):
    tok = load_tokenizer(llama_model_file)
    text = "Hello <s>. Ça va? 😀 \t def f(x):\n    return x"
    assert tok.encode(text) == llama_tok.encode(text)


# --- special tokens in text against transformers ------------------------------------------------
@pytest.fixture(scope="session")
def hf_llama(tmp_path_factory):
    """transformers' LlamaTokenizer from Mistral's tokenizer.model, for legacy=True and False."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf_llama")
    shutil.copy(mistral_tokenizer_path(), d / "tokenizer.model")
    return {legacy: transformers.LlamaTokenizer.from_pretrained(str(d), legacy=legacy) for legacy in (True, False)}


words = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda s: not s.startswith((" ", "\u2581")))  # see test_leading_space_after_special_token
with_specials = st.lists(st.one_of(words, st.sampled_from(["<s>", "</s>", "<unk>"])), max_size=6).map("".join)


@pytest.mark.live
@pytest.mark.parametrize("legacy", [True, False])
@SETTINGS
@given(text=with_specials)
def test_special_tokens_in_text_match_transformers(mistral_tok, hf_llama, legacy, text):
    mistral_tok.legacy = legacy
    try:
        assert mistral_tok.encode(text, add_bos=False) == hf_llama[legacy].encode(text, add_special_tokens=False)
    finally:
        mistral_tok.legacy = True


SLOW_CASES = ["Hello <s>.", " Hello", "  Hello  world ", "<s>Hello", "Hello</s> there", "Hello</s>  there",
              "<s> x", "\tx", "", "a<unk>b", "x </s>\n\ty", "<s><s> </s>"]


@pytest.mark.live
@pytest.mark.skipif(not VENV457.exists(), reason="needs a Python with transformers 4.57 (the sentencepiece-based LlamaTokenizer): "
                    "set GOLDEN_OPENLLAMA_PYTHON to its python")
@pytest.mark.parametrize("legacy", [True, False])
def test_leading_space_after_special_token(mistral_tok, legacy, tmp_path):
    # transformers 5's LlamaTokenizer skips the dummy prefix when a chunk already starts with a space
    # (" Hello" -> ▁Hello, where sentencepiece gives ▁ ▁Hello); we follow sentencepiece and the
    # sentencepiece-based LlamaTokenizer of transformers 4.x, which the Llama-2 docs describe.
    script = ("import json,sys\nfrom transformers import LlamaTokenizer\n"
              f"tok = LlamaTokenizer(sys.argv[1], legacy={legacy})\n"
              f"print(json.dumps([tok.encode(s) for s in {SLOW_CASES!r}]))\n")
    env = dict(os.environ)
    if not legacy:  # legacy=False needs protobuf, which that venv lacks: lend it ours
        import google.protobuf
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "google").symlink_to(Path(google.protobuf.__file__).parents[1])
        env["PYTHONPATH"] = str(shim)
    run = subprocess.run([str(VENV457), "-c", script, str(mistral_tokenizer_path())], capture_output=True,
                         text=True, env=env, timeout=300)
    if run.returncode:
        pytest.skip(f"transformers 4.57 did not run: {run.stderr[-400:]}")
    expected = json.loads(run.stdout.strip().splitlines()[-1])
    mistral_tok.legacy = legacy
    try:
        assert [mistral_tok.encode(s) for s in SLOW_CASES] == expected
    finally:
        mistral_tok.legacy = True


# --- the front object ---------------------------------------------------------------------------
def test_bos_eos_defaults_and_overrides(mistral_tok):
    assert mistral_tok.encode("Hi") == [1, 15359]
    assert mistral_tok.encode("Hi", add_bos=False, add_eos=True) == [15359, 2]
    assert mistral_tok.encode("Hi <s>", split_special_tokens=True) == [1] + mistral_tok.model.encode("Hi <s>")


def test_decode_writes_special_tokens_unless_skipped(mistral_tok):
    ids = mistral_tok.encode("Hello </s> world", add_eos=True)
    # legacy=True: " world" after </s> is a fresh sentence with its own dummy prefix, "▁▁world"
    assert mistral_tok.decode(ids) == "<s>Hello </s>  world</s>"
    assert mistral_tok.decode(ids, skip_special_tokens=True) == "Hello   world"
    assert mistral_tok.decode(np.array(ids)) == mistral_tok.decode(ids)


@SETTINGS
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_round_trip(mistral_tok, text):
    # a text that spells a special token ("<s>") is parsed as that token, as transformers does: not plain text
    assume(not any(s in text for s in ("<s>", "</s>", "<unk>")))
    sp = spm.SentencePieceProcessor(model_file=str(mistral_tokenizer_path()))
    if sp.decode(sp.encode(text)) == text:
        assert mistral_tok.decode(mistral_tok.encode(text), skip_special_tokens=True) == text
        assert mistral_tok.decode(mistral_tok.encode(text, add_bos=False)) == text


def test_tokenize_gives_pieces(mistral_tok):
    # an Egyptian hieroglyph is not in the vocabulary: its UTF-8 bytes F0 93 80 80 fall back to byte pieces
    assert mistral_tok.tokenize("Hello world \U00013000") == ["▁Hello", "▁world", "▁", "<0xF0>", "<0x93>", "<0x80>", "<0x80>"]


def test_batch_encode_pads_left_and_right(mistral_tok):
    texts = ["Hello world", "Hi", ""]
    rows = [mistral_tok.encode(t) for t in texts]
    for side in ("left", "right"):
        batch = mistral_tok.batch_encode(texts, padding_side=side)
        assert batch.input_ids.dtype == np.int64 and batch.attention_mask.dtype == np.int64
        assert batch.input_ids.shape == (3, 3)
        for b, row in enumerate(rows):
            mask = batch.attention_mask[b].astype(bool)
            assert batch.input_ids[b][mask].tolist() == row
            assert (batch.input_ids[b][~mask] == mistral_tok.eos_id).all()  # no pad token: EOS pads
            assert mask.tolist() == ([0] * (3 - len(row)) + [1] * len(row) if side == "left"
                                     else [1] * len(row) + [0] * (3 - len(row)))
    batch = mistral_tok.batch_encode(texts, padding="max_length", max_length=5)
    assert batch["input_ids"].shape == (3, 5)
    with pytest.raises(ValueError, match="max_length=2"):
        mistral_tok.batch_encode(texts, padding="max_length", max_length=2)


def test_checkpoint_directory_with_tokenizer_config(tmp_path, mistral_tok):
    shutil.copy(mistral_tokenizer_path(), tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": True, "legacy": False,
        "pad_token": {"content": "<unk>"}, "chat_template": "{{ messages[0]['content'] }}",
        "added_tokens_decoder": {"0": {"content": "<unk>", "special": True}},
    }))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, Tokenizer)
    assert tok.encode("Hello <s>.") == [1, 22557, 28705, 1, 28723, 2]
    assert tok.pad_id == 0 and tok.chat_template == "{{ messages[0]['content'] }}"
    assert tok.batch_encode(["Hi", "Hello world"]).input_ids[0, 0] == 0


def test_bad_config_names_the_file(tmp_path):
    shutil.copy(mistral_tokenizer_path(), tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nothing|>"}))
    with pytest.raises(ValueError, match="eos_token '<|nothing|>' is not in the vocabulary"):
        load_tokenizer(tmp_path)
