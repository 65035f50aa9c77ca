"""The special-token layout methods against the slow, sentencepiece-based `LlamaTokenizer` of
transformers 4.57, which the Llama-2 page documents and transformers 5 no longer has (its
`LlamaTokenizer` is the fast one). It runs in its own Python (`$GOLDEN_OPENLLAMA_PYTHON`, as
tools/make_golden.py), so it skips, saying so, where there is none.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from realdata import mistral_tokenizer_path
from tinyllama_ref.tokenizer import load_tokenizer

VENV457 = Path(os.environ.get("GOLDEN_OPENLLAMA_PYTHON", "/opt/venv457/bin/python"))
PAIRS = [([5, 6, 7], None), ([5], [8, 9]), ([], None), ([], [4]), ([1, 5, 2], None)]
SWITCHES = [(True, False), (True, True), (False, True), (False, False)]  # (add_bos_token, add_eos_token)
IDS = [[1, 15043, 3186, 2], [0, 1, 2, 3, 4, 700], [22557, 1, 28705, 13, 2, 2]]

SCRIPT = """
import json, sys
from transformers import LlamaTokenizer
path, pairs, switches, ids = sys.argv[1], *map(json.loads, sys.argv[2:5])
out = {}
for bos, eos in switches:
    tok = LlamaTokenizer(path, add_bos_token=bos, add_eos_token=eos, legacy=True)
    for i, (a, b) in enumerate(pairs):
        key = f"{bos},{eos},{i}"
        out[key] = [tok.build_inputs_with_special_tokens(a, b), tok.get_special_tokens_mask(a, b),
                    tok.create_token_type_ids_from_sequences(a, b)]
        built = tok.build_inputs_with_special_tokens(a, b)
        out[key].append(tok.get_special_tokens_mask(built, already_has_special_tokens=True))
tok = LlamaTokenizer(path, legacy=True)
out["tokens"] = [tok.convert_ids_to_tokens(i) for i in ids]
out["tokens_skip"] = [tok.convert_ids_to_tokens(i, skip_special_tokens=True) for i in ids]
out["back"] = [tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(i)) for i in ids]
out["decode_skip"] = [tok.decode(i, skip_special_tokens=True) for i in ids]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def slow():
    if not VENV457.exists():
        pytest.skip(f"needs a Python with transformers 4.57 (the sentencepiece-based LlamaTokenizer) at {VENV457} "
                    f"or $GOLDEN_OPENLLAMA_PYTHON")
    path = mistral_tokenizer_path()
    run = subprocess.run([str(VENV457), "-c", SCRIPT, str(path), *map(json.dumps, (PAIRS, SWITCHES, IDS))],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, f"transformers 4.57 did not run: {run.stderr[-2000:]}"
    return path, json.loads(run.stdout.strip().splitlines()[-1])


def test_special_token_layout_matches_the_slow_llama_tokenizer(slow):
    path, want = slow
    tok = load_tokenizer(path)
    for bos, eos in SWITCHES:
        tok.add_bos_token, tok.add_eos_token = bos, eos
        for i, (a, b) in enumerate(PAIRS):
            built = tok.build_inputs_with_special_tokens(a, b)
            got = [built, tok.get_special_tokens_mask(a, b), tok.create_token_type_ids_from_sequences(a, b),
                   tok.get_special_tokens_mask(built, already_has_special_tokens=True)]
            assert got == want[f"{bos},{eos},{i}"], (bos, eos, a, b)


def test_token_conversion_and_decoding_match_the_slow_llama_tokenizer(slow):
    path, want = slow
    tok = load_tokenizer(path)
    assert [tok.convert_ids_to_tokens(i) for i in IDS] == want["tokens"]
    assert [tok.convert_ids_to_tokens(i, skip_special_tokens=True) for i in IDS] == want["tokens_skip"]
    assert [tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(i)) for i in IDS] == want["back"]
    assert [tok.decode(i, skip_special_tokens=True) for i in IDS] == want["decode_skip"]
