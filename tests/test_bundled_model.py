"""The model that ships inside the package (tinyllama_ref/assets/kjv-llama/) against transformers.

tools/train_bundled_model.py trained it and then recorded, with transformers 5 on the shipped
files, the token ids of four prompts, the logits at every prompt position, and 40 greedy tokens
(tests/fixtures/bundled_golden.npz, with a .json of the prompts beside it). No torch here: we
load the same files with `tl.load` and our own tokenizer and compare.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import tinyllama_ref as tl
from tinyllama_ref.generation import SamplingParams, generate_ids
from tinyllama_ref.tokenizer import load_tokenizer
from conftest import record_parity

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "tinyllama_ref" / "assets" / "kjv-llama"
GOLDEN = Path(__file__).parent / "fixtures" / "bundled_golden.npz"
TOL_LOGITS = 1e-4  # max |Δ| of logits, float32 compute (the same bound as tests/test_golden.py)


@pytest.fixture(scope="module")
def golden():
    meta = json.loads(GOLDEN.with_suffix(".json").read_text(encoding="utf-8"))
    with np.load(GOLDEN) as arrays:
        return meta, dict(arrays)


@pytest.fixture(scope="module")
def model():
    return tl.load(BUNDLED)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(BUNDLED)


def test_golden_was_made_from_the_shipped_weights(golden):
    meta, _ = golden
    digest = hashlib.sha256((BUNDLED / "model.safetensors").read_bytes()).hexdigest()
    assert digest == meta["model_safetensors_sha256"], \
        "model.safetensors changed: rerun `python3 tools/train_bundled_model.py --golden-only`"


def test_bundled_model_is_small_and_uses_gqa(model):
    c = model.config
    assert c.num_key_value_heads < c.num_attention_heads  # the bundled model exercises GQA
    size = sum(f.stat().st_size for f in BUNDLED.iterdir())
    assert size < 20e6, f"bundled assets take {size / 1e6:.1f} MB"


def test_tokenizer_matches_transformers(golden, tokenizer):
    meta, arrays = golden
    for k, record in enumerate(meta["prompts"]):
        assert tokenizer.encode(record["prompt"]) == arrays[f"ids_{k}"].tolist(), record["prompt"]


def test_logits_match_transformers(golden, model):
    meta, arrays = golden
    worst = 0.0
    for k, record in enumerate(meta["prompts"]):
        ids = arrays[f"ids_{k}"][None, :]  # [1, n]
        logits = np.asarray(model(ids).logits[0], dtype=np.float32)  # [n, vocab]
        d = float(np.abs(logits - arrays[f"logits_{k}"]).max())
        worst = max(worst, d)
        assert d <= TOL_LOGITS, f"{record['prompt']!r}: max |Δlogits| = {d:.3g} > {TOL_LOGITS}"
    record_parity("bundled kjv-llama", "max|Δlogits|", worst)


def test_greedy_continuations_match_transformers(golden, model, tokenizer):
    meta, arrays = golden
    n_new = meta["greedy_new_tokens"]
    for k, record in enumerate(meta["prompts"]):
        prompt = arrays[f"ids_{k}"].tolist()
        steps = generate_ids(model, [prompt], SamplingParams(max_new_tokens=n_new, temperature=0.0), eos_ids=())
        new = [int(t[0]) for t in steps]
        assert new == arrays[f"greedy_{k}"][len(prompt):].tolist(), record["prompt"]
        assert tokenizer.decode(new) == record["greedy_text"]
