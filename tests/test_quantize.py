"""Weight-only quantization (`quantize.py`) against torchao's scheme, and the quantized model against transformers.

torchao itself is not a dependency: its formulas are transcribed below in torch, each function citing the
torchao 0.18 source it copies, and our codes, scales, zero points and dequantized weights must equal them
exactly. Where torchao imports (a CPU venv with `pip install --no-deps torchao`), the same comparisons run
against torchao's own functions, and transformers' `TorchAoConfig(Int8WeightOnlyConfig())` loads the
checkpoint for an end-to-end logits check.
"""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyllama_ref as tl
from tinyllama_ref import quantize as Q
from tinyllama_ref.backend import to_numpy
from tinyllama_ref.cli import main
from tinyllama_ref.formats.checkpoint import flatten, random_tensors
from conftest import record_parity

BUNDLED = Path(tl.__file__).parent / "assets" / "kjv-llama"
TOL_LOGITS = 1e-4  # max |Δlogits| vs transformers, float32 (as tests/test_parity_live.py)
TORCH_REASON = "the torchao transcription runs in torch (pip install torch, CPU build)"


@pytest.fixture(scope="module")
def bundled_weights() -> dict:
    """The bundled model's layer-0 linear weights (real trained tensors), float32 [out, in]."""
    model = tl.load(BUNDLED)
    return {k: np.array(v) for k, v in flatten(model.params).items()
            if ".layers.0." in k and k.endswith("proj.weight")}


# -- torchao 0.18's formulas, transcribed -------------------------------------------------------------------------

def torchao_int8(torch, w):
    """torchao/quantization/quantize_/workflows/int8/int8_tensor.py `Int8Tensor.from_hp` (PerRow, SYMMETRIC)
    -> torchao/quantization/quant_primitives.py `_choose_qparams_affine`, `_quantize_affine_no_dtype_cast`,
    `_dequantize_affine_no_dtype_check`."""
    quant_min, quant_max = -128, 127  # _DTYPE_TO_QVALUE_BOUNDS[torch.int8]
    min_val, max_val = torch.amin(w, dim=1, keepdim=True), torch.amax(w, dim=1, keepdim=True)
    min_val_neg = torch.min(min_val, torch.zeros_like(min_val))
    max_val_pos = torch.max(max_val, torch.zeros_like(max_val))
    max_val_pos = torch.max(-min_val_neg, max_val_pos)
    scale = max_val_pos / (float(quant_max - quant_min) / 2)
    zero_point = torch.full_like(scale, int((quant_max + quant_min + 1) / 2))
    scale = torch.clamp(scale, min=torch.finfo(torch.float32).eps).to(torch.float32)  # eps: float32's, from_hp
    zero_point = zero_point.to(torch.int8)
    quant = torch.clamp(torch.round(w * (1.0 / scale)) + zero_point, quant_min, quant_max).to(torch.int8)
    dequant = quant.to(w.dtype, copy=True) - zero_point.to(w.dtype)
    return quant, scale, (dequant * scale).to(w.dtype)


def torchao_int4(torch, w, group_size):
    """quant_primitives.py `_choose_qparams_affine_tinygemm`, `_quantize_affine_tinygemm_no_dtype_cast`,
    `_dequantize_affine_tinygemm_no_dtype_check`; the nibble order of int4_tile_packed_to_4d_tensor.py
    `Int4TilePackedTo4dTensor.from_hp` (`quant_2d`, before `_convert_weight_to_int4pack` tiles it)."""
    quant_min, quant_max = 0, 15
    out, n_in = w.shape
    x = w.view(out, n_in // group_size, group_size)
    min_val_neg, max_val_pos = torch.amin(x, dim=-1), torch.amax(x, dim=-1)
    scale = (max_val_pos - min_val_neg) / float(quant_max - quant_min)
    scale = torch.clamp(scale, min=torch.finfo(w.dtype).smallest_normal)
    mid_point = (quant_max + quant_min + 1) / 2
    zero_point = min_val_neg + scale * mid_point
    min_val = (zero_point - scale * mid_point)[..., None]
    quant = torch.clamp(torch.round((x - min_val) / scale[..., None]), quant_min, quant_max).to(torch.int32)
    packed = (quant.view(out, n_in)[::, ::2] << 4 | quant.view(out, n_in)[::, 1::2]).to(torch.uint8)
    dequant = (quant - mid_point).to(w.dtype)
    dequant *= scale[..., None]
    dequant += zero_point[..., None]
    return packed, scale, zero_point, dequant.view(out, n_in)


def special_matrices():
    """Rows that test the edges: all zeros (scale clamped to eps), constant, ties at .5, one huge value."""
    rows = np.zeros((4, 64), np.float32)
    rows[1] = 0.25
    rows[2] = np.arange(64, dtype=np.float32) / 15 - 2
    rows[3, 5] = 3e4
    return rows


def test_int8_equals_torchaos_formulas_on_real_weights(bundled_weights):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    for name, w in {**bundled_weights, "edge rows": special_matrices()}.items():
        qw = Q.quantize_int8(w, name)
        quant, scale, dequant = torchao_int8(torch, torch.from_numpy(w))
        np.testing.assert_array_equal(qw.packed, quant.numpy(), err_msg=name)  # bit for bit: tolerance 0
        np.testing.assert_array_equal(qw.scales, scale.numpy(), err_msg=name)
        np.testing.assert_array_equal(Q.dequantize(qw), dequant.numpy(), err_msg=name)


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_equals_torchaos_formulas_on_real_weights(bundled_weights, group_size):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    for name, w in {**bundled_weights, "edge rows": special_matrices()}.items():
        qw = Q.quantize_int4(w, group_size, name)
        packed, scale, zero_point, dequant = torchao_int4(torch, torch.from_numpy(w), group_size)
        np.testing.assert_array_equal(qw.packed, packed.numpy(), err_msg=name)
        np.testing.assert_array_equal(qw.scales, scale.numpy(), err_msg=name)
        np.testing.assert_array_equal(qw.zeros, zero_point.numpy(), err_msg=name)
        np.testing.assert_array_equal(Q.dequantize(qw), dequant.numpy(), err_msg=name)


def test_float16_weights_follow_torchaos_dtypes():
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    w = (np.random.default_rng(1).standard_normal((8, 64)) * 0.1).astype(np.float16)
    qw8, qw4 = Q.quantize_int8(w), Q.quantize_int4(w, 32)
    quant, scale, dequant = torchao_int8(torch, torch.from_numpy(w))
    np.testing.assert_array_equal(qw8.scales, scale.numpy())  # float32 scales, computed in float16 first
    np.testing.assert_array_equal(Q.dequantize(qw8), dequant.numpy())
    assert Q.dequantize(qw8).dtype == np.float16
    packed, scale, zero_point, dequant = torchao_int4(torch, torch.from_numpy(w), 32)
    np.testing.assert_array_equal(qw4.scales, scale.numpy())  # float16 scales and zero points
    np.testing.assert_array_equal(Q.dequantize(qw4), dequant.numpy())


def test_torchao_itself_when_it_imports(bundled_weights):
    """Only where torchao imports (not a dependency): its own primitives and Int8WeightOnlyConfig on CPU."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    pytest.importorskip("torchao", reason="torchao is not installed (pip install --no-deps torchao in a venv)")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    from torchao.quantization.quant_primitives import (MappingType, _choose_qparams_affine_tinygemm,
                                                       _dequantize_affine_tinygemm, _quantize_affine_tinygemm)

    for name, w in bundled_weights.items():
        t = torch.from_numpy(w)
        linear = torch.nn.Sequential(torch.nn.Linear(w.shape[1], w.shape[0], bias=False))
        linear[0].weight.data.copy_(t)
        quantize_(linear, Int8WeightOnlyConfig())
        qw = Q.quantize_int8(w, name)
        np.testing.assert_array_equal(qw.packed, linear[0].weight.qdata.numpy(), err_msg=name)
        np.testing.assert_array_equal(qw.scales, linear[0].weight.scale.numpy(), err_msg=name)
        np.testing.assert_array_equal(Q.dequantize(qw), linear[0].weight.dequantize().numpy(), err_msg=name)
        block = (1, 64)
        scale, zero = _choose_qparams_affine_tinygemm(t, MappingType.ASYMMETRIC, block, torch.int32, 0, 15)
        codes = _quantize_affine_tinygemm(t, block, scale, zero, torch.int32, 0, 15)
        qw = Q.quantize_int4(w, 64, name)
        np.testing.assert_array_equal(Q.unpack_int4(qw.packed), codes.numpy(), err_msg=name)
        np.testing.assert_array_equal(qw.scales, scale.numpy(), err_msg=name)
        np.testing.assert_array_equal(qw.zeros, zero.numpy(), err_msg=name)
        dequant = _dequantize_affine_tinygemm(codes, block, scale, zero, torch.int32, 0, 15)
        np.testing.assert_array_equal(Q.dequantize(qw), dequant.numpy(), err_msg=name)


# -- the quantized model against transformers --------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A tiny Llama-2-shaped checkpoint (GQA, untied head) saved by transformers, with randomised weights."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    transformers = pytest.importorskip("transformers", reason="the parity check needs transformers 5.x")
    torch.set_num_threads(1)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen) if p.ndim == 1 else
                    0.3 * torch.randn(p.shape, generator=gen))
    path = tmp_path_factory.mktemp("quant_hf")
    model.save_pretrained(path)
    return path, model


IDS = np.array([[5, 17, 3, 90, 44, 1, 60, 2, 33, 71, 8, 19]])


@pytest.mark.parametrize("scheme,group_size", [("int8", 128), ("int4", 32), ("int4", 64)])
def test_quantized_model_matches_transformers_with_torchaos_weights(hf_checkpoint, scheme, group_size):
    """transformers runs with every layer linear weight replaced by torchao's dequantized one (the transcription):
    the same numbers torchao's weight-only kernels multiply by."""
    import torch

    path, hf = hf_checkpoint
    fake = type(hf)(hf.config).eval()
    fake.load_state_dict(hf.state_dict())
    with torch.no_grad():
        for name, p in fake.named_parameters():
            if ".layers." in name and name.endswith("proj.weight"):
                p.copy_(torchao_int8(torch, p)[2] if scheme == "int8" else torchao_int4(torch, p, group_size)[3])
        expected = fake(torch.from_numpy(IDS)).logits.numpy()
        plain = hf(torch.from_numpy(IDS)).logits.numpy()
    ours = tl.load(path, quantize=scheme, group_size=group_size)(IDS).logits
    err = float(np.abs(ours - expected).max())
    record_parity(f"{scheme} g{group_size}", "max|Δlogits|", err, table="quantization vs transformers")
    assert err < TOL_LOGITS
    assert np.abs(plain - expected).max() > 100 * TOL_LOGITS  # quantization did change the logits


def test_transformers_torchao_int8_when_it_imports(hf_checkpoint):
    """`from_pretrained(quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))` on CPU, where torchao imports."""
    import torch
    import transformers

    pytest.importorskip("torchao", reason="torchao is not installed (pip install --no-deps torchao in a venv)")
    from torchao.quantization import Int8WeightOnlyConfig

    path, _ = hf_checkpoint
    hf = transformers.LlamaForCausalLM.from_pretrained(
        path, quantization_config=transformers.TorchAoConfig(Int8WeightOnlyConfig()), attn_implementation="eager")
    assert hasattr(hf.model.layers[0].self_attn.q_proj.weight, "qdata")  # an Int8Tensor
    assert not hasattr(hf.lm_head.weight, "qdata")  # transformers leaves the head float, as we do
    with torch.no_grad():
        expected = hf(torch.from_numpy(IDS)).logits.numpy()
    err = float(np.abs(tl.load(path, quantize="int8")(IDS).logits - expected).max())
    record_parity("int8 (torchao itself)", "max|Δlogits|", err, table="quantization vs transformers")
    assert err < TOL_LOGITS


# -- the model: what is quantized, on every backend ----------------------------------------------------------------

CONFIG = tl.LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        tie_word_embeddings=True)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_forward_is_the_float_model_with_dequantized_weights(backend, scheme):
    """Bit-identical logits, through the KV cache too: dequantizing layer by layer changes nothing else."""
    tensors = random_tensors(CONFIG, std=0.3)
    model = backend.build(CONFIG, tensors, quantize=scheme, group_size=32)
    dequantized = dict(tensors)
    for name, arr in flatten(model.params).items():
        if isinstance(arr, Q.QuantizedWeight):
            dequantized[name] = to_numpy(Q.dequantize(arr))
    reference = backend.build(CONFIG, dequantized, packed=False)  # quantized weights run one product each
    ids = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 9))
    a, b = model(ids).logits, reference(ids).logits
    assert np.array_equal(backend.to_numpy(a), backend.to_numpy(b))
    steps = [m(ids[:, 5:], past_key_values=m(ids[:, :5], use_cache=True).past_key_values) for m in (model, reference)]
    assert np.array_equal(backend.to_numpy(steps[0].logits), backend.to_numpy(steps[1].logits))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantizing_and_dequantizing_move_nothing_between_host_and_device(double, scheme):
    """On the CuPy double: quantizing at load and every decode step cost the transfers of the float model."""
    from tinyllama_ref.generation import SamplingParams
    from test_transfers import counted_steps

    tensors, counts = random_tensors(CONFIG, std=0.3), []
    for quantize in (None, scheme):
        double.transfers.reset()
        model = tl.build_model(CONFIG, tensors, backend="cupy", quantize=quantize, group_size=32)
        built = (double.transfers.to_device, double.transfers.to_host)
        prompts = [[3, 14, 15, 9, 26, 35], [2, 7], [18, 28, 1, 8]]
        steps = counted_steps(model, prompts, SamplingParams(max_new_tokens=4, temperature=0), double.transfers)
        counts.append((built, [{k: v for k, v in step.items() if k != "log"} for step in steps]))
    assert counts[0] == counts[1]


def test_what_is_quantized_and_what_stays_float():
    model = tl.build_model(CONFIG, random_tensors(CONFIG), quantize="int4", group_size=32)
    leaves = flatten(model.params)
    quantized = {k for k, v in leaves.items() if isinstance(v, Q.QuantizedWeight)}
    assert quantized == {f"model.layers.{i}.{b}.{p}.weight" for i in range(2) for b, ps in Q.LINEARS.items()
                         for p in ps}
    assert isinstance(model.params["lm_head"]["weight"], np.ndarray)  # tied head and embedding: float, one array
    assert model.params["lm_head"]["weight"] is model.params["model"]["embed_tokens"]["weight"]
    assert model.num_parameters() == tl.build_model(CONFIG, random_tensors(CONFIG)).num_parameters()
    q = leaves["model.layers.0.mlp.down_proj.weight"]
    assert q.packed.dtype == np.uint8 and q.packed.shape == (64, 48) and q.scales.shape == (64, 3)


def test_memory_footprint_of_the_bundled_model():
    sizes = {q: tl.load(BUNDLED, quantize=q, group_size=64).get_memory_footprint() for q in (None, "int8", "int4")}
    n = tl.load(BUNDLED).num_parameters()
    shapes = [(192, 192), (64, 192), (64, 192), (192, 192), (512, 192), (512, 192), (192, 512)] * 4  # [out, in]
    in_layers = sum(o * i for o, i in shapes)
    float_rest = 4 * (n - in_layers)  # embedding, head and norms stay float32
    assert sizes[None] == 4 * n
    assert sizes["int8"] == float_rest + in_layers + sum(4 * o for o, _ in shapes)  # a byte each, a scale a row
    assert sizes["int4"] == float_rest + in_layers // 2 + sum(2 * 4 * o * (i // 64) for o, i in shapes)


# -- properties ------------------------------------------------------------------------------------------------------

@st.composite
def weights(draw, group_sizes=(2, 4, 8, 16, 32)):
    group = draw(st.sampled_from(group_sizes))
    out, groups = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    seed, scale = draw(st.integers(0, 2**31)), draw(st.sampled_from([1e-3, 1.0, 50.0]))
    w = (np.random.default_rng(seed).standard_normal((out, group * groups)) * scale).astype(np.float32)
    return w, group


def error_bound(w, scales, group):
    """Half a scale per element, plus float32 rounding of the affine arithmetic (a few ulps of the group's range)."""
    out, n = w.shape
    span = np.abs(w).reshape(out, -1, group).max(axis=-1, keepdims=True)
    return (scales[..., None] / 2 * (1 + 1e-6) + 8 * np.finfo(np.float32).eps * span).repeat(group, -1).reshape(out, n)


@settings(max_examples=60, deadline=None)
@given(weights())
def test_int4_round_trip_error_is_at_most_half_a_scale(case):
    w, group = case
    qw = Q.quantize_int4(w, group)
    assert (np.abs(Q.dequantize(qw) - w) <= error_bound(w, qw.scales, group)).all()


@settings(max_examples=60, deadline=None)
@given(weights())
def test_int8_round_trip_error_is_at_most_half_a_scale(case):
    w, _ = case
    qw = Q.quantize_int8(w)
    assert (np.abs(Q.dequantize(qw) - w) <= error_bound(w, qw.scales, w.shape[1])).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 9), st.integers(0, 2**31))
def test_int4_packing_round_trips_exactly(rows, pairs, seed):
    codes = np.random.default_rng(seed).integers(0, 16, (rows, 2 * pairs)).astype(np.uint8)
    packed = Q.pack_int4(codes)
    assert packed.shape == (rows, pairs) and packed.dtype == np.uint8
    np.testing.assert_array_equal(Q.unpack_int4(packed), codes)
    assert Q.pack_int4(np.array([[5, 10]], np.uint8))[0, 0] == 0x5A  # the even column in the high nibble


def test_docstring_examples():
    qw = Q.quantize_int4(np.array([[0.0, 1.5, 3.0, -1.5]], np.float32), 4)
    assert qw.packed.tolist() == [[0x5A, 0xF0]]
    np.testing.assert_allclose([qw.scales[0, 0], qw.zeros[0, 0]], [0.3, 0.9], rtol=1e-6)
    qw = Q.quantize_int8(np.array([[0.5, -1.0], [2.0, 0.0]], np.float32))
    assert qw.packed.tolist() == [[64, -127], [127, 0]]


# -- bad input ---------------------------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300))
def test_a_group_size_that_does_not_divide_names_the_tensor(n_in, group):
    w = np.ones((2, n_in), np.float32)
    if n_in % group == 0 and n_in % 2 == 0:
        Q.quantize_int4(w, group, "w")
        return
    with pytest.raises(Q.QuantizationError, match=r"^my\.weight: ") as e:
        Q.quantize_int4(w, group, "my.weight")
    assert (f"group_size {group} does not divide its input size {n_in}" in str(e.value)
            or f"input size must be even; got {n_in}" in str(e.value))


def test_model_level_errors_name_the_argument_or_the_tensor():
    tensors = random_tensors(CONFIG)
    with pytest.raises(Q.QuantizationError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight: group_size 128 "
                                                 r"does not divide its input size 64.*e\.g\. 64 or 32"):
        tl.build_model(CONFIG, tensors, quantize="int4", group_size=128)
    with pytest.raises(ValueError, match="quantize must be None, 'int8' or 'int4', got 'int3'"):
        tl.build_model(CONFIG, tensors, quantize="int3")
    for bad in (0, -32, 2.5, True):
        with pytest.raises(Q.QuantizationError, match="group_size must be a positive integer"):
            tl.build_model(CONFIG, tensors, quantize="int4", group_size=bad)
    with pytest.raises(Q.QuantizationError, match=r"w: quantization takes a float matrix \[out, in\], got shape"):
        Q.quantize_int8(np.ones(3, np.float32), "w")


def test_cli_generate_and_info_with_quantize(capsys):
    assert main(["generate", "In the beginning", "-n", "4", "--quantize", "int4", "--group-size", "64"]) == 0
    assert capsys.readouterr().out.startswith("In the beginning")
    assert main(["info", "--quantize", "int8"]) == 0
    assert "weights:    4.5 MiB as loaded (int8 layers)" in capsys.readouterr().out
    assert main(["generate", "In", "-n", "2", "--quantize", "int4", "--group-size", "128"]) == 1  # given: kept
    assert "group_size 128 does not divide its input size 192" in capsys.readouterr().err


def test_int4_without_a_group_size_takes_the_largest_of_128_64_32_that_divides_each_weight(capsys):
    """torchao's 128 divides neither the bundled model's width (192) nor SmolLM2's (576): the default works on both."""
    assert [Q.default_group_size(n) for n in (192, 512, 576, 1536, 96, 4096)] == [64, 128, 64, 128, 32, 128]
    with pytest.raises(Q.QuantizationError, match=r"^w: none of the default int4 group sizes 128, 64, 32 divides "
                                                 r"its input size 48; give a group_size that does, e.g. 48 or 24$"):
        Q.quantize_int4(np.ones((2, 48), np.float32), name="w")
    model = tl.load(BUNDLED, quantize="int4")
    assert Q.group_sizes(model.params) == {64: [(p, 192) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                   "up_proj")], 128: [("down_proj", 512)]}
    assert main(["generate", "In the beginning", "-n", "2", "--quantize", "int4", "--seed", "0"]) == 0
    assert main(["info", "--quantize", "int4"]) == 0
    assert ("int4 groups: the largest of 128, 64, 32 dividing each input: 64 for q_proj, k_proj, v_proj, o_proj, "
            "gate_proj, up_proj (input 192); 128 for down_proj (input 512)") in capsys.readouterr().out


def test_the_benchmark_runs_and_prints_its_table():
    """A smoke run (no time is looked at): benchmarks/quantization.py on the bundled model."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    args = ["--models", "bundled", "--new-tokens", "3", "--group-sizes", "64", "--rounds", "1"]
    proc = subprocess.run([sys.executable, "benchmarks/quantization.py", *args], cwd=repo, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("bundled ")]
    assert [r[1] for r in rows] == ["float32", "int8", "int4"] and rows[2][2] == "g64"
    assert rows[0][2] == "9.0" and rows[1][2] == "4.5"  # MiB: float32, then int8 layers


def test_int4_with_groups_of_32_reproduces_a_q4_1_gguf_exactly():
    """llama.cpp's Q4_1 is the same grid: per 32 weights, 16 levels from the minimum to the maximum. So the
    weights a Q4_1 file stands for (SmolLM2-135M's, real) come back unchanged through int4 with group_size 32."""
    import realdata
    from tinyllama_ref.formats.ggml_quants import dequantize
    from tinyllama_ref.formats.gguf_file import read_gguf_file

    tensors = [t for t in read_gguf_file(realdata.smollm2_gguf_path()).tensors
               if t.name.startswith("blk.0.") and t.type_name == "Q4_1"]
    assert len(tensors) >= 5
    for t in tensors:
        w = dequantize(t.data, "Q4_1").reshape(t.shape)
        np.testing.assert_array_equal(Q.dequantize(Q.quantize_int4(w, 32, t.name)), w, err_msg=t.name)
        assert np.abs(Q.dequantize(Q.quantize_int4(w, 64, t.name)) - w).max() > 0  # a coarser grid loses some
