"""tools/llamacpp_parity.py: its metrics and its string generator (pure), and a short run of llama.cpp
itself when the tool's cached build is there (`python tools/llamacpp_parity.py` makes it; else it skips)."""
from __future__ import annotations

import importlib.util
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from tinyllama_ref.fetch import cache_root

REPO = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lp = _load("llamacpp_parity", REPO / "tools" / "llamacpp_parity.py")


# --- metrics -------------------------------------------------------------------------------------------

def test_kl_is_zero_for_equal_logits_and_shift_invariant():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 40)).astype(np.float32)
    np.testing.assert_allclose(lp.kl_divergence(x, x), 0.0, atol=1e-12)
    np.testing.assert_allclose(lp.kl_divergence(x, x + 7.5), 0.0, atol=1e-12)  # softmax ignores a constant


def test_kl_matches_the_definition_and_is_asymmetric():
    p_logits = np.log(np.array([[0.7, 0.2, 0.1]]))
    q_logits = np.log(np.array([[0.5, 0.25, 0.25]]))
    expected = 0.7 * np.log(0.7 / 0.5) + 0.2 * np.log(0.2 / 0.25) + 0.1 * np.log(0.1 / 0.25)
    np.testing.assert_allclose(lp.kl_divergence(p_logits, q_logits), [expected], rtol=1e-12)
    reverse = 0.5 * np.log(0.5 / 0.7) + 0.25 * np.log(0.25 / 0.2) + 0.25 * np.log(0.25 / 0.1)
    np.testing.assert_allclose(lp.kl_divergence(q_logits, p_logits), [reverse], rtol=1e-12)


def test_kl_is_finite_for_large_float32_logits():
    x = np.array([[1000.0, -1000.0, 0.0]], np.float32)
    assert np.isfinite(lp.kl_divergence(x, x[:, ::-1])).all()


def test_top1_and_logit_stats():
    ours = np.array([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]], np.float32)
    theirs = ours.copy()
    theirs[1] = [0.0, 2.5, 0.0]  # a different winner at position 1
    assert lp.top1_agreement(ours, theirs) == 0.75
    stats = lp.logit_stats(ours, theirs)
    assert stats["positions"] == 4 and stats["top1"] == 0.75 and stats["max_abs"] == 2.5
    assert stats["max_kl"] > 0 and stats["mean_kl"] == pytest.approx(stats["max_kl"] / 4)
    with pytest.raises(ValueError, match="different shapes"):
        lp.logit_stats(ours, theirs[:3])


def test_split_rows_and_first_mismatches():
    assert lp.split_rows(np.array([1, 2, 3, 4, 5]), np.array([2, 0, 3])) == [[1, 2], [], [3, 4, 5]]
    bad = lp.first_mismatches(["a", "b", "c"], [[1], [2], [3]], [[1], [9], [8]], k=1)
    assert bad == [{"text": "b", "ours": [2], "llama.cpp": [9]}]


# --- the string generator ----------------------------------------------------------------------------------

def test_generated_strings_are_deterministic_and_mixed():
    strings = lp.generate_strings(2000, seed=0)
    assert strings == lp.generate_strings(2000, seed=0)
    assert strings != lp.generate_strings(2000, seed=1)
    assert lp.generate_strings(50, seed=0) == strings[:50]  # a shorter run is a prefix of a longer one
    text = "".join(strings)
    assert "" in strings and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)  # UTF-8 can carry every one
    text.encode("utf-8")
    categories = {unicodedata.category(c)[0] for c in text}
    assert {"L", "N", "P", "Z", "M", "S", "C"} <= categories  # letters ... marks, symbols (emoji), controls
    assert any(len(s.encode("utf-8")) > len(s) * 3 for s in strings)  # some made mostly of 4-byte emoji/CJK
    assert "<|im_start|>" in text and "  " in text and "\t" in text


# --- llama.cpp itself, when the tool's build is cached ---------------------------------------------------

@pytest.fixture(scope="module")
def llamacpp_python():
    python = lp.venv_python(cache_root())
    if lp.installed_version(python) != lp.VERSION:
        pytest.skip(f"no llama_cpp {lp.VERSION} in {python}: `python tools/llamacpp_parity.py` builds it once")
    return python
