"""The float64 torch reference (tests/torch_grad_reference.py) is checked before it is trusted.

Its gradients must match central differences of its own loss on a few coordinates of every tensor of
tiny configs (GQA and MQA, biases, tied and untied heads, scaled RoPE, a left-padded batch with -100
labels): max |fd - autograd| / max |autograd| <= 1e-6 per tensor (measured: about 1e-9). And the
patches must matter: plain transformers in float64 gives NaN on a left-padded batch and float32-sized
gradient errors on any batch. And both sides must start from the same RoPE frequencies, bit for bit:
one float32 ulp of a frequency costs ~1e-9 in the float64 gradients.
"""
import numpy as np
import pytest

import tinyllama_ref as tl
from conftest import needs_transformers
from tinyllama_ref.rope_scaling import rope_inv_freq
from grad_check import finite_difference_errors, first_real_label_ignored, relative_error
from tinyllama_ref.formats.checkpoint import random_tensors

TOL_FD = 1e-6  # max |fd - autograd| / max |autograd| per tensor, float64, h = 1e-5

CASES = {
    "gqa bias tied left-pad": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=4, attention_bias=True,
                                   mlp_bias=True, tie_word_embeddings=True),
    "mqa untied llama3": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=8, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 4}),
    "mha dynamic past max_pos": dict(num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4,
                                     rope_parameters={"rope_type": "dynamic", "rope_theta": 100.0, "factor": 2.0}),
}


def case_inputs(kwargs: dict, seed: int = 0):
    """(transformers config, HF-named float32 tensors, ids, labels, mask): two rows of 6, the second left-padded by 2,
    some labels -100."""
    _, transformers = needs_transformers("the torch gradient reference")
    kwargs = {**dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                     max_position_embeddings=32), **kwargs}
    tensors = random_tensors(tl.LlamaConfig.from_dict(kwargs), seed=seed, std=0.3)
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, kwargs["vocab_size"], (2, 6))
    mask = np.ones((2, 6), np.int64)
    mask[1, :2] = 0
    ids[mask == 0] = 0
    labels = rng.integers(0, kwargs["vocab_size"], (2, 6))
    labels[0, 3] = -100
    return transformers.LlamaConfig(**kwargs), tensors, ids, first_real_label_ignored(labels, mask), mask


@pytest.mark.parametrize("case", CASES)
def test_float64_reference_equals_finite_differences(case):
    torch, _ = needs_transformers("the torch gradient reference")
    from torch_grad_reference import hf_causal_lm, model_loss, named_grads

    config, tensors, ids, labels, mask = case_inputs(CASES[case])
    model = hf_causal_lm(config, "float64", tensors)
    model_loss(model, ids, labels, mask).backward()
    grads = named_grads(model)

    def loss():
        with torch.no_grad():
            return float(model_loss(model, ids, labels, mask))

    arrays = {name: p.data for name, p in model.named_parameters()}
    errors = finite_difference_errors(loss, arrays, grads, np.random.default_rng(1))
    assert len(errors) == len(arrays)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL_FD, f"{case}: the reference's gradient of {worst} is off from finite differences " \
                                    f"by {errors[worst]:.2e} > {TOL_FD:g}"


def test_plain_float64_transformers_is_not_a_float64_reference():
    """Why the patches: unpatched, a left-pad query's softmax is NaN, and float32 steps leave ~1e-7 errors."""
    torch, _ = needs_transformers("the torch gradient reference")
    from torch_grad_reference import hf_causal_lm, torch_value_and_grad

    config, tensors, ids, labels, mask = case_inputs(CASES["gqa bias tied left-pad"])
    plain = hf_causal_lm(config, "float64", tensors)
    out = plain(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), labels=torch.from_numpy(labels))
    assert torch.isnan(out.loss)
    loss, grads = torch_value_and_grad(config, ids, labels, mask, "float64", tensors)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())

    plain.zero_grad()
    unpadded = plain(input_ids=torch.from_numpy(ids[:1]), labels=torch.from_numpy(labels[:1]))
    unpadded.loss.backward()
    loss, grads = torch_value_and_grad(config, ids[:1], labels[:1], None, "float64", tensors)
    gap = relative_error(plain.model.norm.weight.grad.numpy(), grads["model.norm.weight"])
    assert 1e-9 < gap < 1e-4 and abs(float(unpadded.loss.detach()) - loss) > 1e-12 * loss


def test_float64_steps_are_undone():
    needs_transformers("the torch gradient reference")
    from transformers.models.llama import modeling_llama as ml
    from torch_grad_reference import float64_steps

    before = (ml.LlamaRMSNorm.forward, ml.LlamaRotaryEmbedding.forward, ml.eager_attention_forward)
    with float64_steps():
        assert ml.LlamaRMSNorm.forward is not before[0] and ml.eager_attention_forward is not before[2]
    assert (ml.LlamaRMSNorm.forward, ml.LlamaRotaryEmbedding.forward, ml.eager_attention_forward) == before


ROPE = {  # rope_parameters (rope_theta added) and max_position_embeddings: 3 and 8 tokens fall either side of
    # dynamic's and longrope's switch
    "default": ({}, 16), "linear": ({"factor": 2.0}, 16), "dynamic": ({"factor": 2.7}, 4),
    "llama3": ({"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 4}, 16),
    "yarn": ({"factor": 2.0, "original_max_position_embeddings": 4}, 8),
    "longrope": ({"short_factor": [1.0, 1.5, 2.5, 4.0, 1.0, 1.2, 3.0, 2.0],
                  "long_factor": [2.0, 1.0, 3.5, 1.5, 1.1, 4.0, 2.0, 1.0], "original_max_position_embeddings": 4}, 8),
}


@pytest.mark.parametrize("rope_type", ROPE)
def test_rope_frequencies_equal_transformers_bit_for_bit(rope_type):
    """Our inverse frequencies and attention factor equal transformers' exactly (head_dim 4-16, three bases), at
    sequence lengths below and above the switch points."""
    torch, transformers = needs_transformers("the torch gradient reference")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    extra, max_pos = ROPE[rope_type]
    for head_dim in (4, 8, 16):
        for theta in (10000.0, 100.0, 500000.0):
            params = {"rope_type": rope_type, "rope_theta": theta, **extra}
            for key in ("short_factor", "long_factor"):
                if key in params:
                    params[key] = params[key][:head_dim // 2]
            kwargs = dict(hidden_size=head_dim, num_attention_heads=1, head_dim=head_dim,
                          max_position_embeddings=max_pos, rope_parameters=params)
            for n in (3, 8):
                theirs = LlamaRotaryEmbedding(transformers.LlamaConfig(**kwargs))
                theirs(torch.zeros(1), torch.arange(n)[None])  # dynamic and longrope choose their frequencies here
                inv_freq, factor = rope_inv_freq(tl.LlamaConfig.from_dict(kwargs), n)
                assert np.array_equal(inv_freq, theirs.inv_freq.numpy()) and factor == theirs.attention_scaling, \
                    f"{params}, head_dim {head_dim}, {n} tokens: {inv_freq} != {theirs.inv_freq.numpy()}"
