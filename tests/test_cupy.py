"""The CuPy path: the same code on NumPy, on the strict CuPy double, and on real CuPy when a GPU is present.

The double (tests/cupy_double.py) is checked first: a test that passes on it must have kept host and
device arrays apart, as real CuPy insists. Then the forward pass and cached decoding run on every
backend against NumPy, within float32 rounding (1e-4; the double, being NumPy inside, agrees exactly).
"""
import numpy as np
import pytest

import tinyllama_ref as tl
from tinyllama_ref import backend as B
from tinyllama_ref import llama
from tinyllama_ref.formats.checkpoint import random_tensors

TOL = 1e-4


# -- the double is as strict as CuPy ---------------------------------------------------------------

def test_the_double_is_what_the_package_finds(double):
    x = double.asarray(np.arange(3))
    assert B.is_cupy_array(x) and not B.is_cupy_array(np.arange(3))
    assert B.xp_of(np.ones(2), x) is double and B.get_module("cupy") is double and B.cupy_available()


def test_the_double_refuses_implicit_conversion_and_mixing(double):
    x, host = double.asarray(np.arange(6.0).reshape(2, 3)), np.ones(3)
    refused = [lambda: np.asarray(x), lambda: x.__array__(), lambda: x + host, lambda: host * x,
               lambda: np.exp(host) * x, lambda: double.where(x > 0, host, 0.0),
               lambda: double.concatenate([x, host[None]]), lambda: x[np.array([0])],
               lambda: x.__setitem__(0, host)]
    for i, call in enumerate(refused):
        with pytest.raises(TypeError):
            call()
            pytest.fail(f"case {i} mixed host and device without an error")
    # Python and NumPy scalars are fine, as in CuPy; results stay on the device.
    y = np.float32(2) * x + 1 - np.exp(x) / 3.0
    assert B.is_cupy_array(y) and B.is_cupy_array(x.max()) and x.max().shape == ()
    assert double.transfers.to_host == 0 and double.transfers.to_device == 1


@pytest.mark.parametrize("read", [lambda x: x.get(), lambda x: B.to_numpy(x), lambda x: int(x[0, 0]),
                                  lambda x: float(x.sum()), lambda x: bool(x[0, 1]), lambda x: x[1, 1].item(),
                                  lambda x: x.tolist(), lambda x: x[x > 2], lambda x: f"{x.max()}",
                                  lambda x: range(9)[x[0, 2]]],
                         ids=["get", "to_numpy", "int", "float", "bool", "item", "tolist", "boolean index",
                              "format", "index"])
def test_every_read_back_is_counted(double, read):
    x = double.arange(6).reshape(2, 3)
    read(x)
    assert (double.transfers.to_device, double.transfers.to_host) == (0, 1), double.transfers.report()


@pytest.mark.parametrize("copy_up", [lambda d: d.asarray([[1, 2]]), lambda d: d.asarray(np.ones(3)),
                                     lambda d: d.array(np.ones(3)), lambda d: d.arange(4)[[0, 2]]],
                         ids=["asarray list", "asarray ndarray", "array", "list index"])
def test_every_copy_up_is_counted(double, copy_up):
    assert B.is_cupy_array(copy_up(double))
    assert (double.transfers.to_device, double.transfers.to_host) == (1, 0), double.transfers.report()


def test_device_work_costs_no_transfer(double):
    x = double.random.default_rng(0).standard_normal((4, 8), dtype=np.float32)
    y = double.concatenate([x, -x], axis=-1) @ double.ones((16, 2), dtype=np.float32)
    y = double.where(y > 0, y, np.float32(0)).astype(np.float16).reshape(8)[2:5]
    y[0] = 7
    assert double.asarray(y) is y and double.fuse(np.exp) is np.exp
    assert (double.transfers.to_device, double.transfers.to_host) == (0, 0), double.transfers.report()


# -- the model on every backend --------------------------------------------------------------------

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
def test_forward_matches_numpy(backend, name, config):
    tensors = random_tensors(config, std=0.3)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 24))
    mask = np.ones_like(ids)
    mask[0, :5] = 0
    cpu = tl.build_model(config, tensors, backend="numpy")(ids, attention_mask=mask)
    out = backend.build(config, tensors)(ids, attention_mask=mask)
    assert B.is_cupy_array(out.logits) == (backend.name != "numpy")
    assert np.abs(backend.to_numpy(out.logits) - cpu.logits).max() <= TOL


def test_cache_decoding_matches_full_forward(backend):
    config = dict(configs())["gqa_bias_tied"]
    model = backend.build(config, random_tensors(config, std=0.3))
    ids = np.arange(12)[None] % config.vocab_size
    full = backend.to_numpy(model(ids).logits)
    out = model(ids[:, :6], use_cache=True)
    for i in range(6, 12):
        out = model(ids[:, i:i + 1], past_key_values=out.past_key_values, use_cache=True)
        assert np.abs(backend.to_numpy(out.logits[:, 0]) - full[:, i]).max() <= TOL


def test_the_book_runs_on_every_backend(backend):
    """`llama.forward` on device arrays: the same code the learner reads, on the GPU path."""
    config = dict(configs())["gqa_bias_tied"]
    model = backend.build(config, random_tensors(config, std=0.3))
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (2, 10))
    book = llama.forward(model.params, config, backend.xp.asarray(ids))
    assert np.abs(backend.to_numpy(book) - backend.to_numpy(model(ids).logits)).max() <= TOL


def test_forward_takes_host_inputs_for_device_params(backend):
    """`tl.forward` with the model's device params and NumPy inputs: checked on the host, copied up once each."""
    config = dict(configs())["mha"]
    model = backend.build(config, random_tensors(config, std=0.3))
    ids = np.random.default_rng(3).integers(0, config.vocab_size, (2, 9))
    mask, positions = np.ones_like(ids), np.broadcast_to(np.arange(9), (2, 9)).copy()
    mask[1, :2], positions[1] = 0, np.maximum(np.arange(9) - 2, 0)
    out = tl.forward(model.params, config, ids, attention_mask=mask, position_ids=positions, labels=ids)
    want = model(ids, attention_mask=mask, position_ids=positions, labels=ids)
    assert np.abs(backend.to_numpy(out.logits) - backend.to_numpy(want.logits)).max() <= TOL
    assert abs(float(out.loss) - float(want.loss)) <= TOL
