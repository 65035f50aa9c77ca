"""The fused kernels of `fused.py` equal the book's functions, and the model runs them on CuPy only.

On NumPy and on the CuPy double a fused kernel is its Python function, so there it must agree to the
bit; real CuPy compiles it (cupy.fuse) and rounds in its own order, so every backend is held to the
same float tolerance here, and the bit-for-bit check of the whole fused layer runs on the double.
"""
import numpy as np
import pytest

import tinyllama_ref as tl
from tinyllama_ref import fused, llama
from tinyllama_ref.backend import is_cupy_array
from tinyllama_ref.formats.checkpoint import random_tensors

TOL = {"float32": 1e-6, "float16": 2e-3}  # relative, against the plain function


def draws(backend, dtype, *shapes):
    rng = np.random.default_rng(0)
    return [backend.xp.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes]


def assert_close(got, want, backend, dtype):
    got, want = backend.to_numpy(got), backend.to_numpy(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rms_norm_kernel_equals_the_book(backend, dtype):
    x, w = draws(backend, dtype, (2, 5, 64), (64,))
    assert_close(fused.rms_norm(x, w, 1e-5), llama.rms_norm(x, w, 1e-5), backend, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rope_kernel_equals_the_book(backend, dtype):
    """Many positions, as the style guide asks: position 0 is the identity and hides layout bugs."""
    (x,) = draws(backend, dtype, (2, 3, 7, 16))
    positions = backend.xp.asarray(np.array([[0, 1, 2, 3, 4, 5, 6], [9, 17, 33, 64, 100, 511, 4095]]))
    cos, sin = llama.rope_cos_sin(backend.xp.asarray(llama.rope_frequencies(10000.0, 16)), positions)
    assert_close(fused.apply_rope(x, cos, sin), llama.apply_rope(x, cos, sin), backend, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_swiglu_kernel_equals_the_book(backend, dtype):
    gate, up = draws(backend, dtype, (2, 5, 48), (2, 5, 48))
    assert_close(fused.silu_mul(gate, up), llama.silu(gate) * up, backend, dtype)


def test_kernels_are_fused_by_the_array_module_once(double, monkeypatch):
    fused_by = []
    monkeypatch.setattr(double, "fuse", lambda fn: fused_by.append(fn.__name__) or fn)
    gate = double.ones((2, 3), dtype=np.float32)
    kernel = fused.elementwise_kernel(lambda g, u: llama.silu(g) * u)
    kernel(gate, gate)
    kernel(gate, gate)
    assert fused_by == ["<lambda>"]  # compiled on first use only
    assert kernel(np.ones(2), np.ones(2)).shape == (2,) and fused_by == ["<lambda>"]  # NumPy: the function itself


CONFIG = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_fused_layer_is_bit_identical_to_the_book_on_the_double(double, monkeypatch, dtype):
    """The model takes the fused layer on CuPy (here the double, whose fuse runs the Python as written):
    every kernel and its wiring reproduce NumPy's logits to the last bit, through the KV cache too."""
    calls = []
    monkeypatch.setitem(fused.KERNELS, "act_mul", lambda g, u: calls.append(1) or fused.silu_mul(g, u))
    config = tl.LlamaConfig(**CONFIG, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    tensors = random_tensors(config, std=0.3)
    cpu = tl.build_model(config, tensors, dtype=dtype, packed=False)  # the double runs q, k, v one by one
    gpu = tl.build_model(config, tensors, backend="cupy", dtype=dtype)
    ids = np.random.default_rng(2).integers(0, config.vocab_size, (2, 20))
    assert np.array_equal(gpu(ids).logits.get(), cpu(ids).logits)
    assert calls, "the model on CuPy did not run the fused layer"
    out_cpu, out_gpu = cpu(ids[:, :12], use_cache=True), gpu(ids[:, :12], use_cache=True)
    for i in range(12, 20):
        out_cpu = cpu(ids[:, i:i + 1], past_key_values=out_cpu.past_key_values, use_cache=True)
        out_gpu = gpu(ids[:, i:i + 1], past_key_values=out_gpu.past_key_values, use_cache=True)
        assert np.array_equal(out_gpu.logits.get(), out_cpu.logits)


def test_fused_false_runs_the_plain_functions_on_cupy(double, monkeypatch):
    """`fused=False` (the CLI's default for it: TINYLLAMA_FUSED) hands the book's own functions to the layer."""
    calls = []
    monkeypatch.setitem(fused.KERNELS, "act_mul", lambda g, u: calls.append(1) or fused.silu_mul(g, u))
    config = tl.LlamaConfig(**CONFIG)
    model = tl.build_model(config, random_tensors(config), backend="cupy", fused=False)
    out = model([[1, 2, 3]])
    assert is_cupy_array(out.logits) and not calls
    assert (model.ops.rms_norm, model.ops.apply_rope, model.ops.act_mul) == (llama.rms_norm, llama.apply_rope,
                                                                             llama.silu_mul)


# -- a fused kernel that fails on first use: the plain kernels, with one warning ----------------------------------

@pytest.fixture
def fresh_fusion(monkeypatch):
    """No kernel compiled and no failure yet, as in a new process."""
    monkeypatch.setitem(fused.FUSION, "compiled", {})
    monkeypatch.setitem(fused.FUSION, "failed", None)


def refuses_to_compile(fn):
    raise RuntimeError("nvrtc: error: identifier 'x' is undefined")  # what a CUDA compile error looks like


def fails_when_run(fn):
    def kernel(*args):
        raise TypeError("Invalid type for fusion")
    return kernel


def promotes_to_float64(fn):  # cupy 9400: a Python scalar inside the kernel makes float32 float64
    def kernel(*args):
        out = fn(*args)
        return tuple(o.astype(np.float64) for o in out) if isinstance(out, tuple) else out.astype(np.float64)
    return kernel


def broadcasts_its_outputs(fn):  # cupy 8198 / 8381: a fused function's tuple outputs take one shape
    def kernel(*args):
        out = fn(*args)
        if not isinstance(out, tuple):
            return out
        shape = np.broadcast_shapes(*(o.shape for o in out))
        return tuple(o + o.__class__(np.zeros(shape, o.dtype)) if o.shape != shape else o for o in out)
    return kernel


@pytest.mark.parametrize("fuse", [refuses_to_compile, fails_when_run, promotes_to_float64])
def test_a_fused_kernel_that_fails_on_first_use_falls_back_to_the_plain_kernels_with_one_warning(
        double, monkeypatch, fresh_fusion, fuse):
    monkeypatch.setattr(double, "fuse", fuse)
    config = tl.LlamaConfig(**CONFIG)
    tensors = random_tensors(config, std=0.3)
    ids = np.random.default_rng(3).integers(0, config.vocab_size, (2, 9))
    with pytest.warns(RuntimeWarning, match="fused kernel .* failed on first use") as caught:
        logits = tl.build_model(config, tensors, backend="cupy")(ids).logits
        tl.build_model(config, tensors, backend="cupy")(ids)  # a second model: no second warning
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert np.array_equal(logits.get(), tl.build_model(config, tensors, packed=False)(ids).logits)  # the book's
    assert fused.path().startswith("plain (a fused kernel failed: ")


def test_tuple_outputs_broadcast_to_one_shape_are_caught(double, monkeypatch, fresh_fusion):
    monkeypatch.setattr(double, "fuse", broadcasts_its_outputs)
    pair = fused.elementwise_kernel(lambda x, y: (x, x + y))  # cupy 8198's own example
    x, y = double.asarray(np.array([1.0, 2.0])), double.asarray(np.array([[3.0, 4.0], [5.0, 6.0]]))
    with pytest.warns(RuntimeWarning, match=r"output shape \(2, 2\), expected \(2,\) \(cupy 8198"):
        first, second = pair(x, y)
    assert first.shape == (2,) and second.shape == (2, 2)


def test_the_path_that_ran_is_told(double, fresh_fusion):
    assert fused.path() == "none"
    config = tl.LlamaConfig(**CONFIG)
    tl.build_model(config, random_tensors(config), backend="cupy")([[1, 2, 3]])
    assert fused.path() == "fused (3 kernels)"
