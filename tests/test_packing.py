"""The packed layout (`packing.py`): q/k/v and gate/up as row views of one matrix per group, one product each.

It changes the number of calls into BLAS, nothing else: the logits, the cache, the gradients and what is saved
equal those of the weights kept apart (float32: each output is the same dot product, so only BLAS's blocking
can move the last bit), the parameters keep the checkpoint's names and shapes, and a weight that is no longer
the packed view (replaced, quantized) is run on its own.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyllama_ref as tl
from tinyllama_ref import packing
from tinyllama_ref.formats.checkpoint import flatten, random_tensors

TOL = 1e-5  # max |Δ| / max |ref|, float32: the products of one group in one call or in three


def config_for(kv_heads: int, bias: bool, mlp_bias: bool, tied: bool) -> tl.LlamaConfig:
    return tl.LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                          attention_bias=bias, mlp_bias=mlp_bias, tie_word_embeddings=tied)


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@settings(max_examples=20, deadline=None)
@given(kv_heads=st.sampled_from([1, 2, 4]), bias=st.booleans(), mlp_bias=st.booleans(), tied=st.booleans(),
       seed=st.integers(0, 2**16))
def test_packed_logits_and_cache_equal_the_weights_kept_apart(kv_heads, bias, mlp_bias, tied, seed):
    config = config_for(kv_heads, bias, mlp_bias, tied)
    tensors = random_tensors(config, seed=seed, std=0.3)
    packed, apart = tl.build_model(config, tensors), tl.build_model(config, tensors, packed=False)
    assert packed.ops.column_linears is not None and apart.ops.column_linears is None
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, (2, 11))
    assert rel(packed(ids).logits, apart(ids).logits) <= TOL
    out_p, out_a = packed(ids[:, :6], use_cache=True), apart(ids[:, :6], use_cache=True)
    step_p = packed(ids[:, 6:], past_key_values=out_p.past_key_values).logits
    assert rel(step_p, apart(ids[:, 6:], past_key_values=out_a.past_key_values).logits) <= TOL


def test_the_params_keep_their_names_shapes_and_values_as_views_of_one_matrix():
    config = config_for(2, True, False, False)
    tensors = random_tensors(config, std=0.3)
    model = tl.build_model(config, tensors)
    flat = flatten(model.params)
    assert flat.keys() == tensors.keys()
    for name, value in flat.items():
        assert value.shape == tensors[name].shape and np.array_equal(value, tensors[name]), name
    attn = model.params["model"]["layers"][0]["self_attn"]
    base = attn["q_proj"]["weight"].base
    assert base.shape == (32 + 16 + 16, 32) and all(attn[n]["weight"].base is base for n in ("k_proj", "v_proj"))
    assert packing.tiled_base([attn[n]["weight"] for n in ("q_proj", "k_proj", "v_proj")]) is base


def test_saved_checkpoints_are_the_same_bytes(tmp_path):
    config = config_for(2, False, False, False)
    tensors = random_tensors(config, std=0.3)
    tl.build_model(config, tensors).save_pretrained(tmp_path / "packed")
    tl.build_model(config, tensors, packed=False).save_pretrained(tmp_path / "apart")
    assert (tmp_path / "packed/model.safetensors").read_bytes() == (tmp_path / "apart/model.safetensors").read_bytes()


def test_a_weight_replaced_after_loading_is_run_on_its_own():
    """A weight rebound to another array is no longer a view: its group runs one product per weight, and the
    logits follow the new weight (no stale packed matrix is used)."""
    config = config_for(2, False, False, False)
    tensors = random_tensors(config, std=0.3)
    model, apart = tl.build_model(config, tensors), tl.build_model(config, tensors, packed=False)
    new = np.random.default_rng(5).standard_normal((16, 32)).astype(np.float32)
    for m in (model, apart):
        m.params["model"]["layers"][1]["self_attn"]["v_proj"]["weight"] = new.copy()
    attn = model.params["model"]["layers"][1]["self_attn"]
    x = np.ones((1, 2, 32), np.float32)
    assert model.ops.column_linears(x, attn["q_proj"], attn["k_proj"], attn["v_proj"]) is None
    ids = [[3, 1, 4, 1, 5, 9]]
    assert rel(model(ids).logits, apart(ids).logits) <= TOL


def test_an_optimiser_step_writes_through_to_the_packed_matrix():
    """AdamW updates each weight in place: the packed matrix sees it, and the next forward uses it."""
    config = config_for(2, False, False, True)
    tensors = random_tensors(config, std=0.3)
    copies = [{k: v.copy() for k, v in tensors.items()} for _ in range(2)]  # float32 arrays are taken as they are
    models = [tl.build_model(config, copies[0]), tl.build_model(config, copies[1], packed=False)]
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (2, 9))
    results = []
    for model in models:
        loss, grads = tl.value_and_grad(model, ids, ids)
        tl.AdamW(model.params, lr=1e-2).step(grads)
        results.append((loss, grads, model(ids).logits))
    (loss_p, grads_p, logits_p), (loss_a, grads_a, logits_a) = results
    assert abs(loss_p - loss_a) <= TOL * abs(loss_a)
    flat_p, flat_a = flatten(grads_p), flatten(grads_a)
    assert flat_p.keys() == flat_a.keys() and all(rel(flat_p[k], flat_a[k]) <= 1e-4 for k in flat_a)
    assert models[0].ops.column_linears is not None
    attn = models[0].params["model"]["layers"][0]["self_attn"]
    assert packing.tiled_base([attn[n]["weight"] for n in ("q_proj", "k_proj", "v_proj")]) is not None
    assert rel(logits_p, logits_a) <= 1e-4


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_weights_are_not_packed(quantize):
    config = tl.LlamaConfig(vocab_size=48, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = tl.build_model(config, random_tensors(config, std=0.3), quantize=quantize, group_size=32)
    assert model.ops.column_linears is None


def test_memory_mapped_weights_are_not_mistaken_for_a_packed_group(tmp_path):
    """Weights read from one safetensors file share the file's memory map as their base: that is no packing."""
    config = config_for(2, False, False, False)
    tl.build_model(config, random_tensors(config, std=0.3), packed=False).save_pretrained(tmp_path)
    model = tl.load(tmp_path, packed=False)
    q = model.params["model"]["layers"][0]["self_attn"]["q_proj"]["weight"]
    assert packing.packed_linears(model.params) is None and model.ops.column_linears is None, q.base


def test_a_memory_mapped_checkpoint_packs_and_hands_back_the_file_pages(tmp_path):
    """float32 safetensors load memory-mapped: packing copies q/k/v and gate/up and hands back their file pages
    (`release_file_pages`); the tensors beside them in the file, on pages they share, read as before."""
    config = tl.LlamaConfig(vocab_size=48, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    tensors = random_tensors(config, std=0.3)
    tl.build_model(config, tensors, packed=False).save_pretrained(tmp_path)
    packed, apart = tl.load(tmp_path), tl.load(tmp_path, packed=False)
    assert packed.ops.column_linears is not None
    for name, value in flatten(packed.params).items():
        assert np.array_equal(value, tensors[name]), name
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (1, 12))
    assert rel(packed(ids).logits, apart(ids).logits) <= TOL
