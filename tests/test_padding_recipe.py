"""The Llama-2 page's padding recipe, end to end, on the bundled model and its real tokenizer:

    tok.add_special_tokens({"pad_token": "<pad>"})   # returns 1
    model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id

then a padded batch is tokenized, scored and generated exactly as transformers does after the same
steps, and both halves, saved with `save_pretrained` into one directory, load in transformers with
the same ids and logits.
"""
from __future__ import annotations

import numpy as np
import pytest

import tinyllama_ref as tl
from conftest import needs_transformers, record_parity
from tinyllama_ref.cli import default_model_dir
from tinyllama_ref.formats.checkpoint import flatten

from test_save_resize import take_new_rows

TOL = 1e-4  # max |Δlogits| on the real (unpadded) positions, float32: the bound of tests/test_bundled_model.py
TEXTS = ["In the beginning God created the heaven and the earth.", "And God said,", "Let there be light"]


def recipe(tmp_path):
    """(our model, our tokenizer, transformers' model, transformers' tokenizer) after the recipe; our new
    rows are transformers' (its draw is random), after checking that the old rows are untouched."""
    torch, transformers = needs_transformers("the padding recipe against transformers")
    path = default_model_dir()
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tok, model = tl.load_tokenizer(path), tl.load(path)
    assert tok.add_special_tokens({"pad_token": "<pad>"}) == hf_tok.add_special_tokens({"pad_token": "<pad>"}) == 1
    assert len(tok) == len(hf_tok) == model.config.vocab_size + 1
    assert tok.pad_token_id == hf_tok.pad_token_id == model.config.vocab_size
    assert tok.add_special_tokens({"pad_token": "<pad>"}) == 0  # already there
    old = {k: np.array(v) for k, v in flatten(model.params).items()}
    torch.manual_seed(0)
    hf.resize_token_embeddings(len(hf_tok))
    hf.config.pad_token_id = hf_tok.pad_token_id
    model.resize_token_embeddings(len(tok), seed=0)
    model.config.pad_token_id = tok.pad_token_id
    take_new_rows(model, hf, old)
    return model, tok, hf, hf_tok


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_tokenizes_and_scores_as_transformers(side, tmp_path):
    torch, _ = needs_transformers("the padding recipe against transformers")
    model, tok, hf, hf_tok = recipe(tmp_path)
    ours = tok(TEXTS, padding=True, padding_side=side, return_tensors="np")
    theirs = hf_tok(TEXTS, padding=True, padding_side=side, return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])
    assert (ours["input_ids"] == tok.pad_token_id).any()
    with torch.no_grad():
        want = hf(torch.from_numpy(theirs["input_ids"]),
                  attention_mask=torch.from_numpy(theirs["attention_mask"])).logits.numpy()
    got = np.asarray(model(ours["input_ids"], attention_mask=ours["attention_mask"]).logits)
    real = ours["attention_mask"].astype(bool)
    d = float(np.abs(got - want)[real].max())
    record_parity(f"bundled + <pad>, {side} padding", "max|Δlogits|", d, table="padding recipe")
    assert d <= TOL


def test_a_padded_batch_generates_as_transformers(tmp_path):
    torch, _ = needs_transformers("the padding recipe against transformers")
    model, tok, hf, hf_tok = recipe(tmp_path)
    got = tl.generate_batch(model, tok, TEXTS, max_new_tokens=10, temperature=0)
    batch = hf_tok(TEXTS, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        out = hf.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=hf_tok.pad_token_id)
    want = hf_tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [g.strip() for g in got] == [w.strip() for w in want]


def test_the_saved_directory_loads_in_transformers_with_the_pad_token(tmp_path):
    torch, transformers = needs_transformers("the padding recipe against transformers")
    model, tok, _, _ = recipe(tmp_path)
    out = tmp_path / "saved"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert hf.config.pad_token_id == hf_tok.pad_token_id == tok.pad_token_id
    ours = tok(TEXTS, padding=True, return_tensors="np")
    theirs = hf_tok(TEXTS, padding=True, padding_side=tok.padding_side, return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
    with torch.no_grad():
        want = hf(torch.from_numpy(theirs["input_ids"]),
                  attention_mask=torch.from_numpy(theirs["attention_mask"])).logits.numpy()
    got = np.asarray(model(ours["input_ids"], attention_mask=ours["attention_mask"]).logits)
    d = float(np.abs(got - want)[ours["attention_mask"].astype(bool)].max())
    record_parity("bundled + <pad>, saved and reloaded", "max|Δlogits|", d, table="padding recipe")
    assert d <= TOL
    again = tl.load(out)
    assert again.config.pad_token_id == tok.pad_token_id and tl.load_tokenizer(out).pad_token_id == tok.pad_token_id
