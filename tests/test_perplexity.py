"""Perplexity (tinyllama_ref/perplexity.py) against the recipe of transformers' docs, run on transformers.

`hf_recipe` below is the loop of "Perplexity of fixed-length models"
(https://huggingface.co/docs/transformers/perplexity) as the page writes it; transformers runs it on
the same checkpoint with its own tokenizer, and our perplexity must agree to TOL_REL, on the bundled
model (stride = max_length and max_length / 2) and on SmolLM2-135M (skipped when not fetched).
"""
import math
import re

import pytest

import tinyllama_ref as tl
from tinyllama_ref.cli import main
from tinyllama_ref.fetch import is_complete, model_dir
from tinyllama_ref.perplexity import perplexity, perplexity_of_ids, windows
from conftest import needs_transformers, record_parity

from test_bundled_model import BUNDLED

TOL_REL = 1e-4  # relative |Δppl|, float32 compute on both sides
TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; and "
        "darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God "
        "said, Let there be light: and there was light. And God saw the light, that it was good: and God divided "
        "the light from the darkness. And God called the light Day, and the darkness he called Night. And the "
        "evening and the morning were the first day. And God said, Let there be a firmament in the midst of the "
        "waters, and let it divide the waters from the waters. And God made the firmament, and divided the waters "
        "which were under the firmament from the waters which were above the firmament: and it was so. And God "
        "called the firmament Heaven. And the evening and the morning were the second day. And God said, Let the "
        "waters under the heaven be gathered together unto one place, and let the dry land appear: and it was so.")
# Genesis 1:1-9 (King James Version): 247 tokens for the bundled model, 210 for SmolLM2


@pytest.fixture(scope="module")
def torch():
    return needs_transformers("the comparison with transformers' recipe")[0]


@pytest.fixture(scope="module")
def bundled():
    return tl.load(BUNDLED), tl.load_tokenizer(BUNDLED)


def hf_recipe(torch, model, input_ids, max_length: int, stride: int) -> float:
    """The docs' loop, line for line (encodings.input_ids = input_ids, device = CPU)."""
    seq_len = input_ids.size(1)
    nll_sum = 0.0
    n_tokens = 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        ids = input_ids[:, begin_loc:end_loc]
        target_ids = ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(ids, labels=target_ids)
            neg_log_likelihood = outputs.loss
        num_valid_tokens = (target_ids != -100).sum().item()
        batch_size = target_ids.size(0)
        num_loss_tokens = num_valid_tokens - batch_size
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return float(torch.exp(nll_sum / n_tokens))


def load_hf(torch, path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(str(path)))


def check_parity(torch, ours, tokenizer, theirs, hf_tokenizer, text, max_length, stride, case):
    encodings = hf_tokenizer(text, return_tensors="pt")
    assert tokenizer.encode(text) == encodings.input_ids[0].tolist()  # the same tokens on both sides
    expected = hf_recipe(torch, theirs, encodings.input_ids, max_length, stride)
    got = perplexity(ours, tokenizer, text, max_length=max_length, stride=stride)
    rel = abs(got - expected) / expected
    record_parity(case, "rel|Δppl|", rel, table="perplexity parity")
    print(f"{case}: ours {got:.6f}, transformers {expected:.6f}, rel {rel:.1e}")
    assert rel <= TOL_REL
    return got


def test_windows_follow_the_docs_loop():
    assert windows(7, 4, 2) == [(0, 4, 4), (2, 6, 2), (4, 7, 1)]
    assert windows(10, 4, 4) == [(0, 4, 4), (4, 8, 4), (8, 10, 2)]
    assert windows(3, 8, 8) == [(0, 3, 3)]
    for seq_len, max_length, stride in [(50, 8, 3), (50, 8, 8), (17, 16, 1), (9, 4, 4)]:
        plan = windows(seq_len, max_length, stride)
        assert sum(t for _, _, t in plan) == seq_len  # every token is a target exactly once
        assert all(end - begin <= max_length and t <= end - begin for begin, end, t in plan)


@pytest.fixture(scope="module")
def bundled_hf(torch):
    return load_hf(torch, BUNDLED)


@pytest.mark.live
@pytest.mark.parametrize("stride", [128, 64])
def test_bundled_matches_transformers(torch, bundled, bundled_hf, stride):
    ppl = check_parity(torch, *bundled, *bundled_hf, TEXT, 128, stride,
                       f"kjv-llama (max_length 128, stride {stride})")
    assert 1 < ppl < 100  # it was trained on this book


@pytest.mark.live
@pytest.mark.slow
def test_smollm2_matches_transformers(torch):
    path = model_dir("smollm2")
    if not is_complete(path):
        pytest.skip(f"SmolLM2-135M is not fetched at {path} (tinyllama-ref fetch smollm2)")
    theirs, hf_tokenizer = load_hf(torch, path)
    text = TEXT[:TEXT.index(" And God called the firmament")]  # 162 tokens: windows [0, 128) and [64, 162)
    check_parity(torch, tl.load(path), tl.load_tokenizer(path), theirs, hf_tokenizer, text, 128, 64,
                 "smollm2-135M (max_length 128, stride 64)")


@pytest.mark.live
def test_a_last_window_of_one_token_adds_nothing(torch, bundled, bundled_hf):
    """stride = max_length and one token left over: the docs' loop multiplies that window's loss (NaN: no
    target after the shift) by 0 and returns NaN; its weight is 0, so we skip it."""
    model, tokenizer = bundled
    theirs = bundled_hf[0]
    ids = tokenizer.encode(TEXT)[:65]
    assert math.isnan(hf_recipe(torch, theirs, torch.tensor([ids]), 32, 32))
    got = perplexity_of_ids(model, ids, 32, 32)
    expected = hf_recipe(torch, theirs, torch.tensor([ids[:64]]), 32, 32)
    assert abs(got - expected) / expected <= TOL_REL


def test_same_on_every_backend(backend, bundled):
    _, tokenizer = bundled
    model = backend.load(BUNDLED)
    reference = perplexity(bundled[0], tokenizer, TEXT, max_length=64, stride=48)
    assert abs(perplexity(model, tokenizer, TEXT, max_length=64, stride=48) - reference) <= 1e-5 * reference


@pytest.mark.parametrize("kwargs, message", [
    (dict(text=""), "the text is empty"),
    (dict(text="In", max_length=300), "max_length 300 is longer than the model's context (max_position_embeddings "
                                       "= 256)"),
    (dict(text="In the beginning", max_length=8, stride=9), "stride 9 is longer than max_length 8"),
    (dict(text="In the beginning", stride=0), "stride must be at least 1, got 0"),
    (dict(text="In the beginning", max_length=1), "max_length must be at least 2"),
    (dict(text="In the beginning", max_length=2.5), "max_length must be an integer, got 2.5"),
])
def test_errors(bundled, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        perplexity(*bundled, **kwargs)


def test_a_text_of_one_token_is_refused(bundled):
    model, tokenizer = bundled
    assert tokenizer.encode("") == [tokenizer.bos_id]
    with pytest.raises(ValueError, match="the text has 1 token: perplexity needs at least 2"):
        perplexity_of_ids(model, tokenizer.encode(""))


def test_cli_perplexity(tmp_path, capsys, bundled):
    path = tmp_path / "genesis.txt"
    path.write_text(TEXT, encoding="utf-8")
    assert main(["perplexity", str(path), "--max-length", "64", "--stride", "32"]) == 0
    captured = capsys.readouterr()
    last = captured.out.strip().splitlines()[-1]
    assert last == f"perplexity: {perplexity(*bundled, TEXT, max_length=64, stride=32):.4f}"
    assert "windows" in captured.err and "perplexity" in captured.err  # the plan, then the bar
    path.write_bytes(b"\xff\xfe not text")
    assert main(["perplexity", str(path)]) == 1
    assert "not UTF-8 text" in capsys.readouterr().err
