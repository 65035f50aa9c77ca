"""`tl.value_and_grad` checked three ways: against torch autograd, against finite differences, and by a planted error.

1. torch autograd on hypothesis-drawn tiny configs: transformers writes the checkpoint, `tl.load` reads it in
   float64 and float32, and every gradient must match torch's (tests/torch_grad_reference.py; its float64
   steps are themselves checked by finite differences in tests/test_grad_reference.py):
   - float64: max |Δ| / max |ref| <= 1e-8 for every parameter, |Δloss| / |loss| <= 1e-10;
   - float32 (plain transformers): max |Δ| / max |ref| <= 1e-4 for every parameter and the loss.
   The worst error per parameter kind is printed at the end of the run, in float64 and float32:
       python -m pytest tests/test_backprop.py -k autograd
   pad_token_id is None or 0 in the draw: torch gives the pad token's embedding row no gradient
   (nn.Embedding's padding_idx), and neither do we (`test_pad_token_row_gets_no_embedding_gradient_as_in_torch`).
2. Central differences on a tiny float64 model, with no torch: <= 1e-6 (tests/grad_check.py).
3. A backward function made wrong on purpose (the norm weights' gradient × 1.001, SwiGLU's gate gradient
   without its σ' term) must fail the float64 comparison, and the message must name the tensors it broke.
"""
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tinyllama_ref as tl
from conftest import needs_transformers, record_parity
from grad_check import (assert_grads_close, finite_difference_errors, first_real_label_ignored, relative_error,
                        worst_per_kind)
from tinyllama_ref import backprop
from tinyllama_ref.formats.checkpoint import flatten, random_tensors

TOL = {"float64": 1e-8, "float32": 1e-4}  # max |Δ| / max |ref| per parameter
TOL_LOSS = {"float64": 1e-10, "float32": 1e-4}  # |Δloss| / |loss|
TOL_FD = 1e-6  # max |fd - ours| / max |ours| per tensor, float64, h = 1e-5
TABLE = "gradient error per parameter kind (max|Δ|/max|ref|, worst over the drawn configs)"
TABLE_ROPE = "gradient error per rope type (worst over every tensor and the loss)"


def rope_parameters(rope_type: str, head_dim: int):
    """(rope_parameters without rope_theta, max_position_embeddings) of one type, its switch points inside the
    2-8 tokens drawn (dynamic NTK grows past 4, LongRoPE goes long past 4)."""
    factors = st.lists(st.sampled_from([1.0, 1.5, 2.0, 4.0]), min_size=head_dim // 2, max_size=head_dim // 2)
    return {
        "default": st.just(({}, 16)),
        "linear": st.just(({"factor": 2.0}, 16)),
        "dynamic": st.just(({"factor": 2.0}, 4)),
        "llama3": st.just(({"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 4}, 16)),
        "yarn": st.builds(lambda f: ({"factor": f, "original_max_position_embeddings": 4}, int(4 * f)),
                          st.sampled_from([2.0, 4.0])),
        "longrope": st.builds(lambda s, lo: ({"short_factor": s, "long_factor": lo,
                                              "original_max_position_embeddings": 4}, 8), factors, factors),
    }[rope_type]


@st.composite
def llama_configs(draw, rope_type: str) -> dict:
    """Keyword arguments of a tiny transformers LlamaConfig (5.x spelling): MHA, GQA or MQA, biases, tied head."""
    heads, kv = draw(st.sampled_from([(1, 1), (2, 2), (2, 1), (4, 2), (4, 1), (4, 4)]))
    head_dim = draw(st.sampled_from([4, 8]))
    rope, max_pos = draw(rope_parameters(rope_type, head_dim))
    return dict(vocab_size=draw(st.integers(50, 100)), hidden_size=draw(st.sampled_from([8, 16, 32])),
                intermediate_size=draw(st.sampled_from([16, 24])), num_hidden_layers=draw(st.integers(1, 2)),
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                max_position_embeddings=max_pos, rms_norm_eps=draw(st.sampled_from([1e-6, 1e-5])),
                tie_word_embeddings=draw(st.booleans()), attention_bias=draw(st.booleans()),
                mlp_bias=draw(st.booleans()), pad_token_id=draw(st.sampled_from([None, 0])),
                rope_parameters={"rope_type": rope_type, **rope,
                                 "rope_theta": draw(st.sampled_from([10000.0, 100.0]))})


@st.composite
def batches(draw, vocab_size: int):
    """(input_ids, labels, attention_mask or None): 1-3 rows of 2-8 tokens (one token predicts nothing), labels
    random with about a quarter -100, left padding (pad id 0, label -100) in some rows; at least one label kept."""
    b, s = draw(st.integers(1, 3)), draw(st.integers(2, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids = rng.integers(1, vocab_size, (b, s))
    labels = np.where(rng.random((b, s)) < 0.25, -100, rng.integers(0, vocab_size, (b, s)))
    labels[-1, -1] = rng.integers(0, vocab_size)  # something to predict
    mask = None
    if draw(st.booleans()):
        pads = draw(st.lists(st.integers(0, s - 1), min_size=b, max_size=b))
        mask = (np.arange(s)[None] >= np.array(pads)[:, None]).astype(np.int64)
        ids[mask == 0] = 0
        labels[mask == 0] = -100
    return ids, labels, mask


def save_checkpoint(config_kwargs: dict, seed: int, path: Path) -> None:
    """Random weights (std 0.3, norms near 1) written by transformers' save_pretrained."""
    _, transformers = needs_transformers("the torch gradient reference")
    from torch_grad_reference import hf_causal_lm

    tensors = random_tensors(tl.LlamaConfig.from_dict(config_kwargs), seed=seed, std=0.3)
    hf_causal_lm(transformers.LlamaConfig(**config_kwargs), "float32", tensors).save_pretrained(path)


def compare_with_autograd(path, ids, labels, mask, dtype: str, what: str = "", checkpoint: bool = False) -> dict:
    """Our loss and gradients against torch autograd's for the checkpoint at `path`; {tensor name: error}."""
    from torch_grad_reference import torch_value_and_grad

    ref_loss, ref = torch_value_and_grad(path, ids, labels, mask, dtype)
    loss, grads = tl.value_and_grad(tl.load(path, dtype=dtype), ids, labels, mask, checkpoint=checkpoint)
    loss_error = abs(float(loss) - ref_loss) / abs(ref_loss)
    assert loss_error <= TOL_LOSS[dtype], f"{what}{dtype} loss {float(loss)!r}, torch's {ref_loss!r}: " \
                                          f"|Δ|/|ref| = {loss_error:.2e} > {TOL_LOSS[dtype]:g}"
    errors = assert_grads_close(flatten(grads), ref, TOL[dtype], f"{what}{dtype}: ")
    return {**errors, "loss": loss_error}


@pytest.mark.live
@pytest.mark.parametrize("rope_type", ["default", "linear", "dynamic", "llama3", "yarn", "longrope"])
@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_gradients_equal_torch_autograd(rope_type, data):
    needs_transformers("the torch gradient reference")
    config_kwargs = data.draw(llama_configs(rope_type), label="config")
    ids, labels, mask = data.draw(batches(config_kwargs["vocab_size"]), label="batch")
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(config_kwargs, data.draw(st.integers(0, 2**31 - 1), label="seed"), Path(tmp))
        case = f"config {config_kwargs}, ids {ids.tolist()}, labels {labels.tolist()}, " \
               f"mask {None if mask is None else mask.tolist()}: "
        for dtype in ("float64", "float32"):
            errors = compare_with_autograd(tmp, ids, labels, mask, dtype, case)
            for kind, e in worst_per_kind(errors).items():
                record_parity(kind, dtype, e, table=TABLE)
            record_parity(f"rope {rope_type}", dtype, max(errors.values()), table=TABLE_ROPE)
        errors = compare_with_autograd(tmp, ids, labels, mask, "float64", case + "checkpoint=True, ", checkpoint=True)
        record_parity("every kind, checkpoint=True", "float64", max(errors.values()), table=TABLE)


def test_pad_token_row_gets_no_embedding_gradient_as_in_torch(tmp_path):
    """transformers makes `embed_tokens` with padding_idx = pad_token_id: that row gets no gradient from the lookup
    (a tied head's own contribution to it stays)."""
    needs_transformers("the torch gradient reference")
    config_kwargs = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16, pad_token_id=0)
    save_checkpoint(config_kwargs, 1, tmp_path)
    ids, mask = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 0]]), np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    compare_with_autograd(tmp_path, ids, np.where(mask == 0, -100, ids), mask, "float64")


FD_CONFIGS = {  # GQA, biases, tied head, llama3 RoPE; MQA, untied, dynamic NTK grown past max_position_embeddings
    "gqa tied llama3": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=4, attention_bias=True,
                            mlp_bias=True, tie_word_embeddings=True, max_position_embeddings=16,
                            rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 4}),
    "mqa untied dynamic": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=4,
                               rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
}


@pytest.mark.parametrize("case", FD_CONFIGS)
def test_value_and_grad_equals_finite_differences(case):
    """No torch: central differences of our own float64 forward's loss at a few coordinates of every tensor
    (a left-padded row, -100 labels)."""
    config = tl.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                            **FD_CONFIGS[case])
    model = tl.build_model(config, random_tensors(config, seed=2, std=0.3), dtype="float64")
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 40, (2, 7))
    mask = np.ones((2, 7), np.int64)
    mask[0, :3] = 0
    ids[mask == 0] = 0
    labels = np.where(rng.random((2, 7)) < 0.2, -100, rng.integers(0, 40, (2, 7)))
    labels = first_real_label_ignored(labels, mask)  # a fully masked pad query must not reach the loss

    loss, grads = tl.value_and_grad(model, ids, labels, mask)
    forward_loss = float(model(ids, attention_mask=mask, labels=labels).loss)
    assert abs(float(loss) - forward_loss) <= 1e-12 * abs(forward_loss)
    grads, arrays = flatten(grads), flatten(model.params)
    if config.tie_word_embeddings:
        assert grads["lm_head.weight"] is grads["model.embed_tokens.weight"]  # tied: one array, one gradient
    errors = finite_difference_errors(lambda: float(model(ids, attention_mask=mask, labels=labels).loss),
                                      arrays, grads, np.random.default_rng(4))
    assert len(errors) == len({id(a) for a in arrays.values()})
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL_FD, f"{case}: gradient of {worst} is off from finite differences by " \
                                    f"{errors[worst]:.2e} > {TOL_FD:g}"


def norm_weight_gradient_times_1_001(x, weight, eps, d_y, _original=backprop.rms_norm_backward):
    d_x, d_w = _original(x, weight, eps, d_y)
    return d_x, d_w * 1.001


def gate_gradient_without_sigmoid_derivative(gate, up, d_y):
    sig = 1 / (1 + np.exp(-gate))
    return d_y * up * sig, d_y * gate * sig  # the gate's σ'(g) term dropped


PLANTED = {  # the broken backward, a tensor the message must name, a tensor it must not
    "rms_norm_backward": (norm_weight_gradient_times_1_001, "model.layers.0.input_layernorm.weight",
                          "model.layers.0.self_attn.q_proj.weight"),
    "silu_mul_backward": (gate_gradient_without_sigmoid_derivative, "model.layers.1.mlp.gate_proj.weight",
                          "model.layers.1.mlp.down_proj.weight"),
}


@pytest.mark.parametrize("function", PLANTED)
def test_planted_error_is_caught_and_named(function, monkeypatch, tmp_path):
    """The negative control: the float64 comparison fails, naming the tensors that the broken function feeds."""
    needs_transformers("the torch gradient reference")
    broken, named, not_named = PLANTED[function]
    config_kwargs = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    save_checkpoint(config_kwargs, 5, tmp_path)
    ids = np.random.default_rng(6).integers(0, 50, (2, 6))
    compare_with_autograd(tmp_path, ids, ids, None, "float64")  # unbroken, it passes
    monkeypatch.setattr(backprop, function, broken)
    with pytest.raises(AssertionError) as failure:
        compare_with_autograd(tmp_path, ids, ids, None, "float64")
    message = str(failure.value)
    assert f"{named}:" in message and f"{not_named}:" not in message, message


def test_error_measure_is_relative_to_the_largest_entry():
    assert relative_error([1.0, 2.0 + 1e-9], [1.0, 2.0]) == pytest.approx(5e-10)
    assert relative_error([0.0, 1e-3], [0.0, 0.0]) == 1e-3
