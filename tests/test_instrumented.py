"""The book (`llama.forward`), the edge (`model.forward`) and the instrumented layer compute the same thing.

`llama.py` is what a learner reads; `model.forward` runs it with the variants and checks around it;
`instrumented.decoder_layer` rebuilds a layer step by step for `dump` and `pretraining_tp`. These
tests hold them to bit-identical logits, so the code a reader reads is the code that runs.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyllama_ref as tl
from tinyllama_ref import llama
from tinyllama_ref.parity import LAYER_ORDER, trace_forward
from tinyllama_ref.formats.checkpoint import random_tensors


@st.composite
def plain_configs(draw):
    kv = draw(st.sampled_from([1, 2]))
    heads = kv * draw(st.sampled_from([1, 2]))
    head_dim = draw(st.sampled_from([4, 8]))
    return tl.LlamaConfig(vocab_size=draw(st.integers(16, 48)), hidden_size=heads * head_dim, intermediate_size=24,
                          num_hidden_layers=draw(st.integers(1, 3)), num_attention_heads=heads,
                          num_key_value_heads=kv, tie_word_embeddings=draw(st.booleans()),
                          attention_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()),
                          rope_theta=draw(st.sampled_from([10000.0, 500000.0])), max_position_embeddings=64)


def _ids(config, n, seed=0):
    return np.random.default_rng(seed).integers(0, config.vocab_size, (2, n))


@settings(max_examples=20, deadline=None)
@given(plain_configs(), st.integers(1, 12))
def test_the_book_forward_is_bit_identical_to_the_models(config, n):
    model = tl.build_model(config, random_tensors(config, std=0.3))
    ids = _ids(config, n)
    assert np.array_equal(llama.forward(model.params, config, ids), model(ids).logits)


@settings(max_examples=20, deadline=None)
@given(plain_configs(), st.integers(1, 12))
def test_the_instrumented_layer_is_bit_identical_to_the_plain_one(config, n):
    model = tl.build_model(config, random_tensors(config, std=0.3))
    ids = _ids(config, n)
    trace = {}
    traced = tl.forward(model.params, config, ids, trace=trace, output_attentions=True, output_hidden_states=True)
    plain = model(ids, output_attentions=True, output_hidden_states=True)
    assert np.array_equal(traced.logits, plain.logits)
    assert all(np.array_equal(a, b) for a, b in zip(traced.hidden_states, plain.hidden_states))
    assert all(np.array_equal(a, b) for a, b in zip(traced.attentions, plain.attentions))
    assert np.array_equal(trace["logits"], plain.logits)
    for i in range(config.num_hidden_layers - 1):  # a layer's output is the next hidden state (the last is normed)
        assert np.array_equal(trace[f"layers.{i}.output"], plain.hidden_states[i + 1])


def test_the_book_and_the_model_agree_through_the_kv_cache():
    config = tl.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = tl.build_model(config, random_tensors(config, std=0.3))
    ids = _ids(config, 20)
    out = model(ids[:, :5], use_cache=True)
    book_cache = tl.KVCache.allocate(config, 2, 4, like=out.logits)  # small: the book's cache must grow too
    assert np.array_equal(llama.forward(model.params, config, ids[:, :5], cache=book_cache), out.logits)
    for i in range(5, 20):
        out = model(ids[:, i:i + 1], past_key_values=out.past_key_values, use_cache=True)
        assert np.array_equal(llama.forward(model.params, config, ids[:, i:i + 1], cache=book_cache), out.logits)
    assert book_cache.length == out.past_key_values.length == 20


@pytest.mark.parametrize("golden_case", ["gqa", "openllama_stable_shared", "rope_yarn", "pretraining_tp2"])
def test_dump_gives_bit_identical_logits_on_golden_checkpoints(golden_case, golden_dir):
    """Every variant goes through the instrumented path when traced; the logits do not move by one bit."""
    model = tl.load(golden_dir / golden_case)
    ids = np.load(golden_dir / golden_case / "golden.npz")["input_ids"]
    names = trace_forward(model, ids)
    assert np.array_equal(names["logits"], model(ids).logits)
    layer_names = [n.split(".", 2)[2] for n in names if n.startswith("layers.0.")]
    assert layer_names == LAYER_ORDER
