"""One model, one layer: every run goes through `llama.forward` and `llama.decoder_layer`.

`llama.py` is what a learner reads; `model.forward` checks the inputs, runs it with the operations the
variants hand in (`model.layer_ops`), and returns HF's outputs. These tests count the calls of the
book's layer in every variant, and hold a traced (dump) run and the book called directly to
bit-identical logits, so the code a reader reads is the code that runs.
"""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyllama_ref as tl
from tinyllama_ref import llama
from tinyllama_ref.parity import trace_forward as dump
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
def test_a_traced_run_is_bit_identical_to_the_plain_one(config, n):
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
    """A traced run of every variant observes the same layer: the logits do not move by one bit."""
    model = tl.load(golden_dir / golden_case)
    ids = np.load(golden_dir / golden_case / "golden.npz")["input_ids"]
    names = trace_forward(model, ids)
    assert np.array_equal(names["logits"], model(ids).logits)
    layer_names = [n.split(".", 2)[2] for n in names if n.startswith("layers.0.")]
    assert layer_names == LAYER_ORDER


VARIANTS = {  # name: (config fields, build_model/load keywords, backend)
    "plain": ({}, {}, "numpy"),
    "int8": ({}, {"quantize": "int8"}, "numpy"),
    "int4": ({}, {"quantize": "int4", "group_size": 16}, "numpy"),
    "pretraining_tp": ({"pretraining_tp": 2}, {}, "numpy"),
    "gelu activation": ({"hidden_act": "gelu_pytorch_tanh"}, {}, "numpy"),
    "open-llama stable embedding": ({"model_type": "open-llama", "use_stable_embedding": True,
                                     "shared_input_output_embedding": True}, {}, "numpy"),
    "dump": ({}, {}, "numpy"),
    "cupy (fused kernels)": ({}, {}, "cupy"),
    "cupy int4 + pretraining_tp": ({"pretraining_tp": 2}, {"quantize": "int4", "group_size": 16}, "cupy"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_runs_the_books_forward_and_its_one_layer(variant, request, monkeypatch):
    """`tl.load(...)(ids)` of a causal LM runs `llama.forward` once and `llama.decoder_layer` once per layer,
    in every variant; no other decoder layer exists to run."""
    fields, keywords, backend = VARIANTS[variant]
    if backend == "cupy":
        request.getfixturevalue("double")  # the strict CuPy stand-in
    config = tl.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **fields)
    model = tl.build_model(config, random_tensors(config, std=0.3), backend=backend, **keywords)
    calls = {"forward": 0, "decoder_layer": 0}

    def counted(name, fn):
        def run(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return run

    monkeypatch.setattr(llama, "forward", counted("forward", llama.forward))
    monkeypatch.setattr(llama, "decoder_layer", counted("decoder_layer", llama.decoder_layer))
    ids = _ids(config, 5)
    names = dump(model, ids) if variant == "dump" else None
    logits = model(ids).logits
    runs = 2 if variant == "dump" else 1
    assert calls == {"forward": runs, "decoder_layer": runs * config.num_hidden_layers}
    if names is not None:
        assert np.array_equal(names["logits"], logits)
    out = model(ids[:, :3], use_cache=True)  # and through the KV cache
    model(ids[:, 3:], past_key_values=out.past_key_values)
    assert calls["decoder_layer"] == (runs + 2) * config.num_hidden_layers


def test_the_layer_ops_each_variant_hands_in():
    """What `model.layer_ops` chooses, once per model: the book's functions unless a variant replaces one."""
    config = tl.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    tensors = random_tensors(config, std=0.3)
    assert tl.build_model(config, tensors, packed=False).ops == llama.PAPER
    packed = tl.build_model(config, tensors).ops  # q/k/v and gate/up packed at load: one product per group
    assert packed.column_linears is not None and dataclasses.replace(packed, column_linears=None) == llama.PAPER
    int8 = tl.build_model(config, tensors, quantize="int8").ops
    assert int8.column_linear is not llama.linear and int8.rms_norm is llama.rms_norm
    gelu = tl.build_model(tl.LlamaConfig(**{**config.__dict__, "hidden_act": "gelu"}), tensors).ops
    assert gelu.act_mul is not llama.silu_mul and gelu.column_linear is llama.linear


def test_the_cache_owns_its_length():
    """`KVCache.update` appends at its own length, which moves once the last layer has written: a forward
    that fails half-way leaves the cache as it was, and the next one writes at the right slots."""
    config = tl.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = tl.build_model(config, random_tensors(config, std=0.3))
    ids = _ids(config, 6)
    out = model(ids[:, :4], use_cache=True)
    cache = out.past_key_values
    k = np.ones((2, 2, 1, 4), dtype=np.float32)
    cache.update(0, k, k)  # layer 0 of a step that never finishes
    assert cache.length == 4
    step = model(ids[:, 4:5], past_key_values=cache)
    clean = model(ids[:, 4:5], past_key_values=model(ids[:, :4], use_cache=True).past_key_values)
    np.testing.assert_array_equal(step.logits, clean.logits)  # the stray write was overwritten, not attended to
    assert cache.length == 5
