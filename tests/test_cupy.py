"""The CuPy backend runs the same code as NumPy: logits agree to 1e-4 in float32 (skipped without a GPU)."""
import numpy as np
import pytest

import tinyllama_ref as tl
from tinyllama_ref.backend import cupy_available, to_numpy
from tinyllama_ref.formats.checkpoint import random_tensors

pytestmark = pytest.mark.skipif(not cupy_available(), reason="CuPy with a CUDA GPU is not available here")

TOL = 1e-4


def configs():
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64)
    yield "mha", tl.LlamaConfig(**base)
    yield "gqa_bias_tied", tl.LlamaConfig(**base, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                                          tie_word_embeddings=True)
    yield "yarn", tl.LlamaConfig(**base, num_key_value_heads=1, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})
    yield "open_llama", tl.LlamaConfig(**base, model_type="open-llama", use_stable_embedding=True,
                                       shared_input_output_embedding=True, architectures=["OpenLlamaForCausalLM"])


@pytest.mark.parametrize("name, config", list(configs()), ids=[n for n, _ in configs()])
def test_cupy_float32_matches_numpy(name, config):
    tensors = random_tensors(config, std=0.3)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 24))
    mask = np.ones_like(ids)
    mask[0, :5] = 0
    cpu = tl.build_model(config, tensors, backend="numpy")(ids, attention_mask=mask)
    gpu_model = tl.build_model(config, tensors, backend="cupy")
    gpu = gpu_model(ids, attention_mask=mask)
    assert type(gpu.logits).__module__.startswith("cupy")
    assert np.abs(to_numpy(gpu.logits) - cpu.logits).max() <= TOL


def test_cupy_cache_decoding_matches_full_forward():
    config = dict(configs())["gqa_bias_tied"]
    model = tl.build_model(config, random_tensors(config, std=0.3), backend="cupy")
    ids = np.arange(12)[None] % config.vocab_size
    full = to_numpy(model(ids).logits)
    out = model(ids[:, :6], use_cache=True)
    for i in range(6, 12):
        out = model(ids[:, i:i + 1], past_key_values=out.past_key_values, use_cache=True)
        assert np.abs(to_numpy(out.logits[:, 0]) - full[:, i]).max() <= TOL

