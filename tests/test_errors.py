"""Bad input gets a clear error that says what and where; nothing is silently wrong."""
import json

import numpy as np
import pytest

import tinyllama_ref as tl
from tinyllama_ref.formats.checkpoint import random_tensors
from tinyllama_ref.formats.safetensors import bf16_to_f32, f32_to_bf16, read_safetensors, write_safetensors

CONFIG = dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)


def save_checkpoint(path, config=None, tensors=None):
    config = config or tl.LlamaConfig(**CONFIG)
    tensors = random_tensors(config) if tensors is None else tensors
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config.to_dict()))
    write_safetensors(path / "model.safetensors", tensors, {"format": "pt"})
    return path


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(tmp_path / "ckpt")


@pytest.fixture
def model(ckpt, backend):
    return backend.load(ckpt)


# -- inputs (on NumPy, the CuPy double, and real CuPy when a GPU is present) ----------------

def test_token_id_out_of_range_names_the_id_and_position(model):
    with pytest.raises(tl.InputError, match=r"token id 32 at position \(0, 2\) is outside the vocabulary \[0, 32\)"):
        model([[1, 2, 32]])
    with pytest.raises(tl.InputError, match="token id -1"):
        model([[-1, 2]])


def test_wrong_input_rank(model):
    with pytest.raises(tl.InputError, match=r"input_ids must be \[batch, seq\].*got shape \(1, 2, 3\)"):
        model(np.zeros((1, 2, 3), dtype=np.int64))


def test_float_ids_are_refused(model):
    with pytest.raises(tl.InputError, match="must be integers"):
        model(np.array([[1.0, 2.0]]))


def test_ragged_list_is_refused(model):
    with pytest.raises(tl.InputError, match="rectangular"):
        model([[1, 2], [3]])


def test_attention_mask_of_wrong_shape(model):
    with pytest.raises(tl.InputError, match=r"attention_mask must have shape .*\(1, 3\).*got \(1, 2\)"):
        model([[1, 2, 3]], attention_mask=[[1, 1]])


def test_position_ids_of_wrong_shape(model):
    with pytest.raises(tl.InputError, match=r"position_ids must be integers of shape"):
        model([[1, 2, 3]], position_ids=[[0, 1]])


def test_cache_from_another_model_is_refused(tmp_path, model, backend):
    other = backend.load(save_checkpoint(tmp_path / "other", tl.LlamaConfig(**{**CONFIG, "num_hidden_layers": 1})))
    cache = other([[1, 2]], use_cache=True).past_key_values
    with pytest.raises(tl.InputError, match="comes from another model"):
        model([[3]], past_key_values=cache, use_cache=True)


def test_cache_of_another_batch_size_is_refused(model):
    cache = model([[1, 2]], use_cache=True).past_key_values
    with pytest.raises(tl.InputError, match="holds batch 1, input_ids has batch 2"):
        model([[3], [4]], past_key_values=cache)


def test_labels_of_wrong_shape(model):
    with pytest.raises(tl.InputError, match="labels must have the shape"):
        model([[1, 2, 3]], labels=[[1, 2]])


# -- files ---------------------------------------------------------------------------------

def test_truncated_safetensors_names_file_and_tensor(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(tl.CheckpointError, match=r"model.safetensors: tensor '.*' .*truncated or corrupt"):
        tl.load(ckpt)


def test_corrupt_safetensors_header(ckpt):
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[10:20] = b"\xff" * 10
    f.write_bytes(bytes(data))
    with pytest.raises(tl.CheckpointError, match="corrupt safetensors header"):
        tl.load(ckpt)


def test_empty_safetensors_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(tl.CheckpointError, match="truncated safetensors file"):
        tl.load(ckpt)


def test_config_that_is_not_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(tl.ConfigError, match=r"config.json: not valid JSON"):
        tl.load(ckpt)


def test_missing_directory():
    with pytest.raises(FileNotFoundError, match="model not found"):
        tl.load("/nonexistent/checkpoint")


def test_missing_tensor_is_named(tmp_path):
    config = tl.LlamaConfig(**CONFIG)
    tensors = random_tensors(config)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(tl.CheckpointError, match=r"missing tensor\(s\) model.layers.1.mlp.up_proj.weight"):
        tl.load(save_checkpoint(tmp_path / "c", config, tensors))


def test_misshaped_tensor_names_both_shapes(tmp_path):
    config = tl.LlamaConfig(**CONFIG)
    tensors = random_tensors(config)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 16), np.float32)
    with pytest.raises(tl.CheckpointError,
                       match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(16, 16\), but the config needs \(8, 16\)"):
        tl.load(save_checkpoint(tmp_path / "c", config, tensors))


def test_unexpected_tensor_is_named(tmp_path):
    config = tl.LlamaConfig(**CONFIG)
    tensors = random_tensors(config)
    tensors["model.layers.0.mlp.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(tl.CheckpointError, match=r"unexpected tensor\(s\) model.layers.0.mlp.extra.weight"):
        tl.load(save_checkpoint(tmp_path / "c", config, tensors))


# -- config --------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"hidden_size": 18}, "hidden_size"),
    ({"num_key_value_heads": 3}, "num_attention_heads"),
    ({"rope_scaling": {"rope_type": "wobble", "factor": 2.0}}, "rope_scaling.rope_type"),
    ({"rope_scaling": {"type": "linear"}}, "rope_scaling.factor"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling.low_freq_factor"),
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}},
     "rope_scaling.short_factor"),
    ({"hidden_act": "tanh"}, "hidden_act"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"pretraining_tp": 5}, "pretraining_tp"),
    ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
])
def test_bad_config_names_the_field(change, field):
    with pytest.raises(tl.ConfigError, match=f"field '{field}'"):
        tl.LlamaConfig.from_dict({**CONFIG, **change})


def test_both_rope_spellings_are_read():
    old = tl.LlamaConfig.from_dict({**CONFIG, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}})
    new = tl.LlamaConfig.from_dict({**CONFIG, "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                                  "rope_theta": 5e5}})
    assert old.rope_parameters == new.rope_parameters == {"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0}


def test_unknown_model_type():
    with pytest.raises(tl.ConfigError, match="field 'model_type' is 'gpt2'"):
        tl.LlamaConfig.from_dict({**CONFIG, "model_type": "gpt2"})


# -- backend -------------------------------------------------------------------------------

def test_unknown_backend_is_refused(ckpt):
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        tl.load(ckpt, backend="tpu")


def test_backend_from_environment(ckpt, monkeypatch):
    monkeypatch.setenv("TINYLLAMA_BACKEND", "numpy")
    assert tl.load(ckpt).backend == "numpy"
    monkeypatch.setenv("TINYLLAMA_BACKEND", "nope")
    with pytest.raises(ValueError, match=r"unknown backend 'nope'.*TINYLLAMA_BACKEND"):
        tl.load(ckpt)


def test_cupy_without_cupy_or_gpu_is_a_clear_error(ckpt):
    from tinyllama_ref.backend import cupy_available

    if cupy_available():
        pytest.skip("CuPy and a GPU are present: the error path cannot be reached here")
    with pytest.raises(RuntimeError, match="backend='cupy' needs"):
        tl.load(ckpt, backend="cupy")


# -- dtypes --------------------------------------------------------------------------------

def test_bf16_round_trip_is_exact_for_representable_values():
    x = np.array([1.0, -2.0, 0.5, 3.140625, 0.0, -0.0, np.inf], np.float32)
    assert np.array_equal(bf16_to_f32(f32_to_bf16(x)), x)


def test_bf16_and_fp16_files_load_as_float32(tmp_path):
    config = tl.LlamaConfig(**CONFIG)
    t32 = random_tensors(config)
    write_safetensors(tmp_path / "a.safetensors", t32, bf16=list(t32))
    write_safetensors(tmp_path / "b.safetensors", {k: v.astype(np.float16) for k, v in t32.items()})
    a, b = read_safetensors(tmp_path / "a.safetensors"), read_safetensors(tmp_path / "b.safetensors")
    for k, v in t32.items():
        assert a[k].dtype == np.float32 and np.array_equal(a[k], bf16_to_f32(f32_to_bf16(v)))
        assert b[k].dtype == np.float16 and np.array_equal(b[k], v.astype(np.float16))


def test_float32_tensors_are_memory_mapped(ckpt):
    model = tl.load(ckpt)
    w = model.params["model"]["layers"][0]["mlp"]["up_proj"]["weight"]
    assert isinstance(w.base, np.memmap) or isinstance(w, np.memmap) or not w.flags.owndata
