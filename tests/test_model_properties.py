"""Properties of the forward pass that hold for any weights (no transformers needed).

The golden and live suites check that we compute what transformers computes; these check the
invariants a correct decoder must have, on random configs drawn by hypothesis.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyllama_ref as tl
from tinyllama_ref.llama import apply_rope, linear, rope_cos_sin
from tinyllama_ref.rope_scaling import rope_inv_freq
from tinyllama_ref.tensor_parallel import column_linear_tp, row_linear_tp
from tinyllama_ref.formats.checkpoint import random_tensors

TOL = 1e-4  # max |Δlogits| in float32, as for parity with transformers


@st.composite
def configs(draw, **fixed):
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.sampled_from([1, 2]))
    head_dim = draw(st.sampled_from([4, 8]))
    kw = dict(vocab_size=draw(st.integers(16, 64)), hidden_size=heads * head_dim,
              intermediate_size=draw(st.sampled_from([16, 24])), num_hidden_layers=draw(st.integers(1, 2)),
              num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=32,
              tie_word_embeddings=draw(st.booleans()), attention_bias=draw(st.booleans()),
              rope_scaling=draw(st.sampled_from([None, {"rope_type": "linear", "factor": 2.0},
                                                 {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8}])))
    kw.update(fixed)
    return tl.LlamaConfig(**kw)


def make_model(config, seed=0, std=0.3):
    return tl.build_model(config, random_tensors(config, seed=seed, std=std))


@settings(max_examples=25, deadline=None)
@given(configs(), st.integers(2, 12), st.integers(1, 4), st.data())
def test_incremental_decoding_with_cache_equals_full_forward(config, prefix, steps, data):
    model = make_model(config)
    ids = np.array(data.draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=prefix + steps,
                                      max_size=prefix + steps)))[None]
    full = model(ids).logits
    out = model(ids[:, :prefix], use_cache=True)
    np.testing.assert_allclose(out.logits, full[:, :prefix], atol=TOL, rtol=0)
    cache = out.past_key_values
    for i in range(prefix, prefix + steps):
        out = model(ids[:, i:i + 1], past_key_values=cache, use_cache=True)
        assert np.abs(out.logits[:, 0] - full[:, i]).max() <= TOL
    assert cache.length == prefix + steps


@settings(max_examples=25, deadline=None)
@given(configs(), st.integers(2, 16), st.data())
def test_future_tokens_never_change_earlier_logits(config, n, data):
    model = make_model(config)
    ids = np.array(data.draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=n, max_size=n)))[None]
    cut = data.draw(st.integers(1, n - 1))
    other = ids.copy()
    other[0, cut:] = (other[0, cut:] + 1) % config.vocab_size
    a, b = model(ids).logits, model(other).logits
    assert np.abs(a[:, :cut] - b[:, :cut]).max() <= TOL


@settings(max_examples=25, deadline=None)
@given(configs(), st.integers(1, 10), st.integers(1, 6), st.data())
def test_left_padding_does_not_change_real_tokens(config, n, pad, data):
    """A left-padded row, with positions counted from its first real token, gives the unpadded logits."""
    model = make_model(config)
    ids = np.array(data.draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=n, max_size=n)))
    alone = model(ids[None]).logits[0]
    padded = np.concatenate([np.zeros(pad, dtype=ids.dtype), ids])[None]
    mask = np.concatenate([np.zeros(pad, np.int64), np.ones(n, np.int64)])[None]
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    out = model(padded, attention_mask=mask, position_ids=positions).logits[0, pad:]
    assert np.abs(out - alone).max() <= TOL


@settings(max_examples=15, deadline=None)
@given(configs(num_key_value_heads=2, num_attention_heads=4, hidden_size=16), st.integers(1, 10))
def test_gqa_equals_mha_with_repeated_kv_heads(config, n):
    """GQA is MHA whose key/value heads come in identical groups: repeat them and the logits agree."""
    gqa = random_tensors(config, seed=1, std=0.3)
    mha_config = tl.LlamaConfig(**{**config.__dict__, "num_key_value_heads": config.num_attention_heads})
    mha = dict(gqa)
    d, rep = config.head_dim, config.n_rep
    for name, w in gqa.items():
        if ".k_proj." in name or ".v_proj." in name:  # [g*d, ...] -> [g*rep*d, ...], heads in groups
            heads = w.reshape(config.num_key_value_heads, d, *w.shape[1:])
            mha[name] = np.repeat(heads, rep, axis=0).reshape(-1, *w.shape[1:])
    ids = np.arange(n)[None] % config.vocab_size
    a = tl.build_model(config, gqa)(ids).logits
    b = tl.build_model(mha_config, mha)(ids).logits
    assert np.abs(a - b).max() <= TOL


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 500), st.integers(0, 500), st.integers(-200, 200), st.sampled_from([8, 16, 64]),
       st.sampled_from([10000.0, 500000.0]))
def test_rotary_score_depends_only_on_offset(m, n, shift, head_dim, theta):
    """<R_m q, R_n k> == <R_{m+c} q, R_{n+c} k>: shifting both positions leaves the score unchanged."""
    config = tl.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, rope_theta=theta, vocab_size=8,
                            intermediate_size=8, num_hidden_layers=1, max_position_embeddings=4096)
    rng = np.random.default_rng(m * 1000 + n)
    q, k = rng.standard_normal((2, 1, 1, 1, head_dim)).astype(np.float32)
    inv_freq, f = rope_inv_freq(config)
    shift = max(shift, -min(m, n))

    def score(pm, pn):
        cq, sq = rope_cos_sin(inv_freq, np.array([[pm]]), f)
        ck, sk = rope_cos_sin(inv_freq, np.array([[pn]]), f)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-3, abs_tol=1e-3)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([2, 4]), st.integers(1, 3), st.sampled_from(["out", "in"]))
def test_tp_sliced_linear_equals_unsliced(tp, rows, split):
    rng = np.random.default_rng(tp * 7 + rows)
    p = {"weight": rng.standard_normal((8, 16)).astype(np.float32), "bias": rng.standard_normal(8).astype(np.float32)}
    x = rng.standard_normal((1, rows, 16)).astype(np.float32)
    sliced = {"out": column_linear_tp, "in": row_linear_tp}[split]
    np.testing.assert_allclose(sliced(x, p, tp), linear(x, p), atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(configs(intermediate_size=16, num_key_value_heads=2, num_attention_heads=2, hidden_size=16),
       st.integers(2, 10))
def test_pretraining_tp_model_equals_tp1(config, n):
    tensors = random_tensors(config, seed=3, std=0.3)
    tp2 = tl.LlamaConfig(**{**config.__dict__, "pretraining_tp": 2})
    ids = np.arange(n)[None] % config.vocab_size
    a = tl.build_model(config, tensors)(ids).logits
    b = tl.build_model(tp2, tensors)(ids).logits
    assert np.abs(a - b).max() <= TOL


def test_logits_to_keep_and_hidden_states_shapes():
    config = tl.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2)
    model = make_model(config)
    ids = np.arange(10)[None]
    out = model(ids, output_hidden_states=True, output_attentions=True)
    assert out.logits.shape == (1, 10, 32)
    assert len(out.hidden_states) == 4 and out.hidden_states[0].shape == (1, 10, 16)
    assert len(out.attentions) == 3 and out.attentions[0].shape == (1, 4, 10, 10)
    np.testing.assert_allclose(out.attentions[0].sum(-1), 1.0, atol=1e-5)
    last = model(ids, logits_to_keep=1).logits
    assert last.shape == (1, 1, 32)
    np.testing.assert_allclose(last[:, 0], out.logits[:, -1], atol=1e-6)


def test_list_input_is_a_batch_of_one():
    config = tl.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=2)
    model = make_model(config)
    a = model([1, 2, 3]).logits
    b = model(np.array([[1, 2, 3]])).logits
    assert a.shape == (1, 3, 32) and np.array_equal(a, b)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([(1, 1), (2, 1), (4, 2), (6, 3), (4, 4)]), st.integers(1, 5), st.integers(0, 4),
       st.integers(1, 2))
def test_grouped_attention_equals_repeat_kv_then_plain_attention(heads, s, past, b):
    """Stacking a group's query heads against one shared k/v head == copying k/v per head (repeat_kv)."""
    from tinyllama_ref.llama import attention_mask_bias, repeat_kv, scaled_dot_product_attention, softmax

    h, g = heads
    rng = np.random.default_rng(h * 100 + s * 10 + past)
    t, d = past + s, 8
    q = rng.standard_normal((b, h, s, d)).astype(np.float32)
    k, v = rng.standard_normal((2, b, g, t, d)).astype(np.float32)
    mask = np.ones((b, t), np.int64)
    mask[0, :min(past, t - 1)] = 0
    bias = attention_mask_bias(mask, s, t, past)
    out, probs = scaled_dot_product_attention(q, k, v, bias, d ** -0.5)
    kr, vr = repeat_kv(k, h // g), repeat_kv(v, h // g)
    ref_probs = softmax(q @ kr.swapaxes(-1, -2) * d ** -0.5 + bias)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-6)
    np.testing.assert_allclose(out, ref_probs @ vr, atol=1e-5)


def test_labels_are_checked_before_the_cache_is_written():
    """A call that fails validation leaves the cache as it was, so a corrected retry computes the same."""
    config = tl.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=2)
    model = make_model(config)
    cache = model([[1, 2, 3]], use_cache=True).past_key_values
    for labels, keep in (([[1, 2, 3]], 0), ([[4, 5]], 1)):  # the wrong shape; logits not kept for every position
        with pytest.raises(tl.InputError):
            model([[4, 5]], past_key_values=cache, labels=labels, logits_to_keep=keep)
        assert cache.length == 3
    fresh = model([[1, 2, 3]], use_cache=True).past_key_values
    np.testing.assert_array_equal(model([[4]], past_key_values=cache).logits, model([[4]], past_key_values=fresh).logits)
