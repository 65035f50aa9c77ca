"""The logits processors behind sampling, checked by hand and against transformers' own processors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from tinyllama_ref.generation import (SamplingParams, apply_repetition_penalty, apply_temperature, left_pad,
                                      next_tokens, top_k_mask, top_p_mask)

logit_rows = arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(2, 40)),
                    elements=st.floats(-8, 8, width=32))
# Distinct logits: with ties, which tied token top-p drops depends on the sort (torch's is not stable).
distinct_rows = arrays(np.float32, st.tuples(st.just(1), st.integers(2, 40)),
                       elements=st.floats(-8, 8, width=32), unique=True)


def test_top_k_keeps_exactly_the_k_largest():
    z = np.array([[0.1, 2.0, -1.0, 3.0, 0.5]])
    out = top_k_mask(z, 2)
    assert np.isinf(out).tolist() == [[True, False, True, False, True]]


def test_top_k_keeps_ties_with_the_kth():
    assert np.isfinite(top_k_mask(np.array([[1.0, 2.0, 2.0, 0.0]]), 2)).sum() == 2
    assert np.isfinite(top_k_mask(np.array([[2.0, 2.0, 2.0, 0.0]]), 2)).sum() == 3


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([[0.05, 0.5, 0.15, 0.3]])
    keep = np.isfinite(top_p_mask(np.log(probs), 0.75))
    assert keep.tolist() == [[False, True, False, True]]  # 0.5 + 0.3 >= 0.75
    assert np.isfinite(top_p_mask(np.log(probs), 0.01)).sum() == 1  # always at least one


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    z = np.array([[2.0, -2.0, 1.0, 4.0]])
    assert apply_repetition_penalty(z, [[0, 1, 1]], 2.0).tolist() == [[1.0, -4.0, 1.0, 4.0]]


def test_temperature_zero_is_greedy_and_seed_is_deterministic():
    z = np.random.default_rng(0).standard_normal((2, 50)).astype(np.float32)
    greedy = next_tokens(z, [[], []], SamplingParams(temperature=0), np.random.default_rng(1))
    assert greedy.tolist() == z.argmax(-1).tolist()
    sp = SamplingParams(temperature=1.0, top_k=10, top_p=0.9)
    a = [next_tokens(z, [[], []], sp, r).tolist() for r in [np.random.default_rng(7)] * 1]
    b = [next_tokens(z, [[], []], sp, r).tolist() for r in [np.random.default_rng(7)] * 1]
    assert a == b


def test_sampling_only_picks_allowed_tokens():
    z = np.random.default_rng(3).standard_normal((1, 30))
    allowed = np.isfinite(top_k_mask(z, 3))
    rng = np.random.default_rng(0)
    picks = {int(next_tokens(z, [[]], SamplingParams(temperature=1.5, top_k=3), rng)[0]) for _ in range(200)}
    assert picks <= set(np.flatnonzero(allowed[0]).tolist()) and len(picks) == 3


def test_sampling_frequencies_follow_the_distribution():
    probs = np.array([[0.6, 0.3, 0.1]])
    rng = np.random.default_rng(0)
    draws = [int(next_tokens(np.log(probs), [[]], SamplingParams(temperature=1.0), rng)[0]) for _ in range(4000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.abs(freq - probs[0]).max() < 0.03


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("field, value", [("temperature", -1.0), ("top_p", 0.0), ("top_k", -1),
                                          ("repetition_penalty", 0.0), ("max_new_tokens", -5)])
def test_bad_sampling_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


# -- against transformers' LogitsProcessors ----------------------------------------------------

torch = pytest.importorskip("torch", reason="torch is not installed: comparison with transformers' processors")
gen_utils = pytest.importorskip("transformers.generation.logits_process",
                                reason="transformers is not installed")


@pytest.mark.live
@settings(max_examples=40, deadline=None)
@given(logit_rows, st.integers(1, 45))
def test_top_k_matches_transformers(z, k):
    ref = gen_utils.TopKLogitsWarper(top_k=k)(None, torch.from_numpy(z.copy())).numpy()
    ours = top_k_mask(z, k)
    assert np.array_equal(np.isinf(ours), np.isinf(ref))


@pytest.mark.live
@settings(max_examples=40, deadline=None)
@given(distinct_rows, st.floats(0.05, 0.99))
def test_top_p_matches_transformers(z, p):
    ref = gen_utils.TopPLogitsWarper(top_p=p)(None, torch.from_numpy(z.copy())).numpy()
    ours = top_p_mask(z, p)
    assert np.array_equal(np.isinf(ours), np.isinf(ref))


@pytest.mark.live
@settings(max_examples=40, deadline=None)
@given(logit_rows, st.floats(0.5, 3.0), st.data())
def test_repetition_penalty_matches_transformers(z, penalty, data):
    b, v = z.shape
    seen = np.array(data.draw(st.lists(st.lists(st.integers(0, v - 1), min_size=3, max_size=3),
                                       min_size=b, max_size=b)))
    ref = gen_utils.RepetitionPenaltyLogitsProcessor(penalty)(torch.from_numpy(seen),
                                                              torch.from_numpy(z.copy())).numpy()
    np.testing.assert_allclose(apply_repetition_penalty(z, seen.tolist(), penalty), ref, rtol=1e-6)


@pytest.mark.live
@settings(max_examples=20, deadline=None)
@given(logit_rows, st.floats(0.1, 3.0))
def test_temperature_matches_transformers(z, t):
    ref = gen_utils.TemperatureLogitsWarper(t)(None, torch.from_numpy(z.copy())).numpy()
    np.testing.assert_allclose(apply_temperature(z, t), ref, rtol=1e-6)
