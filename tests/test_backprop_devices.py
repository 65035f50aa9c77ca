"""The backward runs on every array module: CuPy (the strict double here, real CuPy where a GPU is) gives
NumPy's loss and gradients, and reads nothing back from the device (host inputs are checked on the host)."""
import numpy as np
import pytest

import tinyllama_ref as tl
from tinyllama_ref.config import LlamaConfig
from tinyllama_ref.formats.checkpoint import flatten, random_tensors

CONFIG = dict(vocab_size=48, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=64, attention_bias=True)
TOL = {"float32": 1e-5, "float64": 1e-12}  # relative to the largest |gradient| of each tensor; real CuPy rounds its own way


def batch():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 48, (2, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding
    labels = np.where(mask == 1, ids, -100)
    return ids, labels, mask


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_gradients_equal_numpys_on_every_backend(backend, dtype, checkpoint):
    config = LlamaConfig.from_dict(CONFIG)
    tensors = random_tensors(config, seed=0, std=0.2)
    ids, labels, mask = batch()
    loss_np, grads_np = tl.value_and_grad(tl.build_model(config, tensors, "numpy", dtype), ids, labels, mask)
    model = tl.build_model(config, tensors, backend.name if backend.name != "double" else "cupy", dtype)
    if backend.transfers is not None:
        backend.transfers.reset()
    loss, grads = tl.value_and_grad(model, ids, labels, mask, checkpoint=checkpoint)
    if backend.transfers is not None:
        assert backend.transfers.to_host == 0, backend.transfers.log
    assert abs(float(backend.to_numpy(loss)) - float(loss_np)) <= TOL[dtype] * abs(float(loss_np))
    flat = flatten(grads)
    for name, want in flatten(grads_np).items():
        got = backend.to_numpy(flat[name])
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert np.abs(got - want).max() <= TOL[dtype] * np.abs(want).max(), name
