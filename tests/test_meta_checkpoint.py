"""Meta's original checkpoints (params.json + consolidated.*.pth + tokenizer.model), read without torch.

Each case builds a tiny Llama with transformers (fixed seed) and turns it into Meta's layout by undoing
what transformers' convert_llama_weights_to_hf.py does: q/k rows back in Meta's interleaved order, Meta's
names, model-parallel shards cut as fairscale's layers cut them; each shard is torch.save'd. Then:
(a) `tl.load(DIR)` equals transformers on the original model; (b) `tinyllama-ref convert DIR OUT` loaded by
transformers equals it too; (c) Meta's own llama/model.py forward (transcribed below, on the unpermuted
weights) equals `tl.load(DIR)`. The reader of `.pth` files must never run code from them: the hostile
pickles below need no torch.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tinyllama_ref as tl
from conftest import needs_transformers, record_parity
from tinyllama_ref import cli
from tinyllama_ref.formats.meta import config_from_params, intermediate_size, read_meta_checkpoint, shard_files
from tinyllama_ref.errors import CheckpointError
from tinyllama_ref.formats.safetensors import read_safetensors_header
from tinyllama_ref.formats.torch_pickle import read_torch_file

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "tinyllama_ref" / "assets" / "kjv-llama" / "tokenizer.model"  # 2048 pieces
VOCAB = 2048
TOL_LOGITS = 1e-4  # max |Δlogits| in float32 (ours vs transformers, ours vs Meta's model.py); measured ~1e-6


# -- the .pth reader on hand-made archives (no torch needed) -------------------------------------

def write_pth(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A zip laid out as torch.save lays it out: archive/data.pkl, archive/byteorder, archive/data/<key>."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)
    return path


def tensor_pickle(size: tuple[int, int], stride: tuple[int, int], offset: int = 0, numel: int = 6) -> bytes:
    """A protocol-0 pickle of {"w": _rebuild_tensor_v2(<FloatStorage "0">, offset, size, stride, False)},
    the calls torch.save writes for one tensor, spelled out opcode by opcode."""
    return ("(dp0\nS'w'\nctorch._utils\n_rebuild_tensor_v2\n"
            f"((S'storage'\nctorch\nFloatStorage\nS'0'\nS'cpu'\nI{numel}\ntQ"  # persistent id -> the storage
            f"I{offset}\n(I{size[0]}\nI{size[1]}\nt(I{stride[0]}\nI{stride[1]}\ntI00\ntRs.").encode()


def test_a_hand_made_pth_reads_as_its_strided_view(tmp_path):
    values = np.arange(6, dtype="<f4")
    path = write_pth(tmp_path / "t.pth", tensor_pickle((2, 2), (1, 3), offset=1), {"0": values.tobytes()})
    tensors, bf16 = read_torch_file(path)
    np.testing.assert_array_equal(tensors["w"], [[1, 4], [2, 5]])  # element (i, j) = storage[1 + i + 3j]
    assert bf16 == set()


@pytest.mark.parametrize("size, stride, offset", [((3, 3), (3, 1), 0), ((2, 2), (1, 3), 3), ((1, 7), (7, 1), 0)])
def test_a_view_past_its_storage_is_refused(tmp_path, size, stride, offset):
    path = write_pth(tmp_path / "t.pth", tensor_pickle(size, stride, offset), {"0": np.zeros(6, "<f4").tobytes()})
    with pytest.raises(CheckpointError, match=r"t\.pth: .*storage '0' holds 6 elements"):
        read_torch_file(path)


def test_a_storage_shorter_than_it_says_is_refused(tmp_path):
    path = write_pth(tmp_path / "t.pth", tensor_pickle((2, 2), (2, 1)), {"0": b"\0" * 8})
    with pytest.raises(CheckpointError, match="should hold 6 float32 elements"):
        read_torch_file(path)


class Exec:
    """Unpickling this runs Python: builtins.exec(code)."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


class System:
    """Unpickling this runs a shell command: os.system, pickled as posix.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def hostile_pickles(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Pickles that create `marker` when loaded by pickle.load; each with the global our error names."""
    code = f"open({str(marker)!r}, 'w').close()"
    builtins = "__builtin__"  # protocol 2 spells the module as Python 2 did
    return {
        "exec": (pickle.dumps(Exec(code), protocol=2), f"{builtins}.exec"),
        "exec, protocol 4": (pickle.dumps(Exec(code), protocol=4), "builtins.exec"),
        "os.system": (pickle.dumps(System(f"touch {marker}"), protocol=2), f"{os.system.__module__}.system"),
        "inside a state dict": (pickle.dumps({"layers.0.attention.wq.weight": Exec(code)}, protocol=2),
                                f"{builtins}.exec"),
        "eval, protocol 0": (f"cbuiltins\neval\n(S{code!r}\ntR.".encode(), "builtins.eval"),
    }


@pytest.mark.parametrize("case", ["exec", "exec, protocol 4", "os.system", "inside a state dict", "eval, protocol 0"])
def test_a_hostile_pickle_runs_nothing_and_is_refused(tmp_path, case):
    marker = tmp_path / "pwned"
    data, culprit = hostile_pickles(marker)[case]
    if case.startswith("exec"):  # the payload is real: plain pickle runs it
        pickle.loads(data)
        assert marker.exists()
        marker.unlink()
    path = write_pth(tmp_path / "consolidated.00.pth", data)
    with pytest.raises(CheckpointError, match=rf"consolidated\.00\.pth: the pickle asks for {culprit},"):
        read_torch_file(path)
    assert not marker.exists()


def test_files_that_are_not_torch_zip_archives_are_refused(tmp_path):
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19." + b"\0" * 64)  # torch < 1.6's magic number
    with pytest.raises(CheckpointError, match="legacy format"):
        read_torch_file(legacy)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a torch.save zip archive"):
        read_torch_file(tmp_path / "junk.pth")
    with zipfile.ZipFile(tmp_path / "other.pth", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="expected one <name>/data.pkl"):
        read_torch_file(tmp_path / "other.pth")
    truncated = write_pth(tmp_path / "truncated.pth", pickle.dumps({"a": 1})[:-3])
    with pytest.raises(CheckpointError, match="truncated.pth: cannot read archive/data.pkl"):
        read_torch_file(truncated)
    not_tensors = write_pth(tmp_path / "ints.pth", pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="entry 'a' of the state dict is a int, not a tensor"):
        read_torch_file(not_tensors)


# Hypothesis: any bytes either read or raise CheckpointError naming the file; never another exception.
FUZZ = settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture],
                database=None)


def reads_or_names_the_file(path: Path) -> None:
    try:
        read_torch_file(path)
    except CheckpointError as e:
        assert path.name in str(e), str(e)


@FUZZ
@given(data=st.binary(max_size=120), at=st.integers(0, 200), cut=st.integers(0, 8))
def test_fuzzed_pickles_are_refused_cleanly(tmp_path, data, at, cut):
    good = tensor_pickle((2, 2), (1, 3), offset=1)
    for i, pkl in enumerate((data, good[:at] + data[:cut] + good[at + cut:])):
        reads_or_names_the_file(write_pth(tmp_path / f"f{i}.pth", pkl, {"0": np.arange(6, dtype="<f4").tobytes()}))


@FUZZ
@given(at=st.integers(0, 10_000), junk=st.binary(min_size=1, max_size=6))
def test_fuzzed_archives_are_refused_cleanly(tmp_path, at, junk):
    raw = write_pth(tmp_path / "good.pth", tensor_pickle((2, 2), (1, 3), offset=1),
                    {"0": np.arange(6, dtype="<f4").tobytes()}).read_bytes()
    at %= len(raw)
    (tmp_path / "bad.pth").write_bytes(raw[:at] + junk + raw[at + len(junk):])
    reads_or_names_the_file(tmp_path / "bad.pth")


# -- params.json (no torch needed) ----------------------------------------------------------------

def compute_intermediate_size(n, ffn_dim_multiplier=1, multiple_of=256):
    """transformers' convert_llama_weights_to_hf.py, verbatim."""
    return multiple_of * ((int(ffn_dim_multiplier * int(8 * n / 3)) + multiple_of - 1) // multiple_of)


@pytest.mark.parametrize("dim, multiplier, multiple_of", [(4096, None, 256), (5120, None, 256), (8192, 1.3, 4096),
                                                          (8192, 1.0, 256), (64, 1.3, 32), (96, None, 64),
                                                          (4096, 1.5, 1024), (333, 0.7, 7)])
def test_intermediate_size_is_transformers_compute_intermediate_size(dim, multiplier, multiple_of):
    theirs = compute_intermediate_size(dim, 1 if multiplier is None else multiplier, multiple_of)
    assert intermediate_size(dim, multiplier, multiple_of) == theirs


def test_config_from_params_follows_the_conversion_script():
    llama2_7b = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1}
    c = config_from_params(llama2_7b, 32000, "2")
    assert (c["intermediate_size"], c["num_key_value_heads"], c["max_position_embeddings"], c["rope_theta"],
            c["vocab_size"], c["rms_norm_eps"]) == (11008, 32, 4096, 10000.0, 32000, 1e-5)
    assert config_from_params(llama2_7b, 32000)["max_position_embeddings"] == 2048  # the script's default: "1"
    llama2_70b = dict(llama2_7b, dim=8192, n_heads=64, n_kv_heads=8, n_layers=80, ffn_dim_multiplier=1.3,
                      multiple_of=4096)
    assert config_from_params(llama2_70b, 32000, "2")["intermediate_size"] == 28672
    code_llama = dict(llama2_7b, rope_theta=1000000, vocab_size=32016)
    c = config_from_params(code_llama, None)
    assert (c["max_position_embeddings"], c["rope_theta"], c["vocab_size"]) == (16384, 1e6, 32016)
    assert config_from_params(dict(llama2_7b, max_seq_len=512), 32000, "2")["max_position_embeddings"] == 512
    with pytest.raises(CheckpointError, match="vocab_size is -1 .* no tokenizer.model"):
        config_from_params(llama2_7b, None)
    with pytest.raises(tl.ConfigError, match="params.json: field 'n_heads' is missing"):
        config_from_params({k: v for k, v in llama2_7b.items() if k != "n_heads"}, 32000)
    with pytest.raises(tl.ConfigError, match="field 'dim' is '4096', expected a positive integer"):
        config_from_params(dict(llama2_7b, dim="4096"), 32000)
    with pytest.raises(ValueError, match="llama_version '3' is not supported"):
        config_from_params(llama2_7b, 32000, "3")


def test_shards_are_numbered_without_a_gap(tmp_path):
    for name in ("consolidated.00.pth", "consolidated.02.pth", "params.json"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth is missing"):
        shard_files(tmp_path)
    (tmp_path / "consolidated.01.pth").write_bytes(b"")
    assert [p.name for p in shard_files(tmp_path)] == [f"consolidated.0{i}.pth" for i in range(3)]


# -- real checkpoints, written by torch ------------------------------------------------------------

@dataclass
class Case:
    dim: int
    n_heads: int
    n_kv_heads: Optional[int]
    multiple_of: int
    ffn_dim_multiplier: Optional[float] = None
    rope_theta: Optional[float] = None
    norm_eps: float = 1e-5
    n_layers: int = 2
    shards: int = 1
    dtype: str = "float32"
    llama1_rope_freqs: bool = False  # LLaMA-1's files also hold rope.freqs


CASES = {
    "mha": Case(dim=64, n_heads=4, n_kv_heads=None, multiple_of=32, norm_eps=1e-6, llama1_rope_freqs=True),
    "gqa, ffn_dim_multiplier, 2 shards, bfloat16": Case(dim=64, n_heads=4, n_kv_heads=2, multiple_of=32,
                                                         ffn_dim_multiplier=1.3, shards=2, dtype="bfloat16"),
    "rope_theta, gqa, 2 shards, float16": Case(dim=96, n_heads=6, n_kv_heads=2, multiple_of=64, rope_theta=1e6,
                                               shards=2, dtype="float16"),
}
# The axis along which Meta's model-parallel shards cut each weight (fairscale's layers); norms: whole in each.
SPLIT_AXIS = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


@pytest.fixture(scope="module")
def torch():
    return needs_transformers("writing Meta checkpoints and comparing with transformers")[0]


def hf_model(torch, case: Case, seed: int):
    """A tiny transformers Llama with random weights, rounded to the case's dtype (kept in float32)."""
    import transformers

    sys.path.insert(0, str(REPO / "tools"))
    from make_golden import randomize_weights_

    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=case.dim, num_hidden_layers=case.n_layers, num_attention_heads=case.n_heads,
        num_key_value_heads=case.n_kv_heads or case.n_heads, rms_norm_eps=case.norm_eps,
        intermediate_size=compute_intermediate_size(case.dim, case.ffn_dim_multiplier or 1, case.multiple_of),
        rope_parameters={"rope_type": "default", "rope_theta": case.rope_theta or 10000.0},
        max_position_embeddings=64, tie_word_embeddings=False)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    randomize_weights_(model, seed)
    with torch.no_grad():  # the weights the checkpoint can hold exactly
        for p in model.parameters():
            p.copy_(p.to(getattr(torch, case.dtype)).float())
    return model


def hf_to_meta(torch, hf_state: dict, case: Case) -> dict:
    """The inverse of transformers' conversion: Meta's names, q/k rows back in Meta's interleaved order."""
    n_kv = case.n_kv_heads or case.n_heads

    def unpermute(w, n_heads):  # undoes the script's permute: view(n, d1//n//2, 2, d2).transpose(1, 2)
        dim1, dim2 = w.shape
        return w.view(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(1, 2).reshape(dim1, dim2)

    meta = {"tok_embeddings.weight": hf_state["model.embed_tokens.weight"],
            "norm.weight": hf_state["model.norm.weight"], "output.weight": hf_state["lm_head.weight"]}
    for i in range(case.n_layers):
        hf = lambda part: hf_state[f"model.layers.{i}.{part}.weight"]  # noqa: E731
        meta.update({
            f"layers.{i}.attention.wq.weight": unpermute(hf("self_attn.q_proj"), case.n_heads),
            f"layers.{i}.attention.wk.weight": unpermute(hf("self_attn.k_proj"), n_kv),
            f"layers.{i}.attention.wv.weight": hf("self_attn.v_proj"),
            f"layers.{i}.attention.wo.weight": hf("self_attn.o_proj"),
            f"layers.{i}.feed_forward.w1.weight": hf("mlp.gate_proj"),
            f"layers.{i}.feed_forward.w2.weight": hf("mlp.down_proj"),
            f"layers.{i}.feed_forward.w3.weight": hf("mlp.up_proj"),
            f"layers.{i}.attention_norm.weight": hf("input_layernorm"),
            f"layers.{i}.ffn_norm.weight": hf("post_attention_layernorm"),
        })
    return {k: v.detach().clone() for k, v in meta.items()}


def write_meta_dir(torch, path: Path, meta: dict, case: Case, vocab_size: int = -1) -> Path:
    """params.json, consolidated.NN.pth (one per shard, in the case's dtype), tokenizer.model."""
    path.mkdir(parents=True)
    dtype = getattr(torch, case.dtype)
    for s in range(case.shards):
        shard = {}
        for name, w in meta.items():
            axis = SPLIT_AXIS.get(name.split(".")[-2])
            part = w if axis is None else torch.chunk(w, case.shards, dim=axis)[s]
            shard[name] = part.to(dtype).contiguous().clone()  # Meta's files: one storage per tensor
        if case.llama1_rope_freqs:
            shard["rope.freqs"] = torch.rand(case.dim // case.n_heads // 2).to(dtype)
        torch.save(shard, path / f"consolidated.{s:02d}.pth")
    params = {"dim": case.dim, "n_layers": case.n_layers, "n_heads": case.n_heads, "multiple_of": case.multiple_of,
              "norm_eps": case.norm_eps, "vocab_size": vocab_size}
    for key in ("n_kv_heads", "ffn_dim_multiplier", "rope_theta"):
        if getattr(case, key) is not None:
            params[key] = getattr(case, key)
    (path / "params.json").write_text(json.dumps(params))
    shutil.copyfile(TOKENIZER, path / "tokenizer.model")
    return path


@pytest.fixture(scope="module", params=list(CASES))
def meta_case(request, torch, tmp_path_factory):
    """(case, Meta dir, the transformers model, Meta's state dict in float32, input ids)."""
    case = CASES[request.param]
    seed = list(CASES).index(request.param)
    model = hf_model(torch, case, seed)
    meta = hf_to_meta(torch, model.state_dict(), case)
    path = write_meta_dir(torch, tmp_path_factory.mktemp("meta") / "llama", meta, case,
                          vocab_size=VOCAB if seed == 2 else -1)
    ids = np.random.default_rng(seed).integers(0, VOCAB, size=(2, 13)).astype(np.int64)
    return request.param, case, path, model, meta, ids


def transformers_logits(torch, model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()


def test_load_equals_transformers(meta_case, torch):
    name, case, path, model, _, ids = meta_case
    ours = tl.load(path)(ids).logits
    err = float(np.abs(ours - transformers_logits(torch, model, ids)).max())
    record_parity(name, "|Δlogits| vs transformers", err, table="Meta checkpoints")
    assert err <= TOL_LOGITS, f"{name}: max |Δlogits| = {err:.3g}"
    # read as transformers' script converts it: HF's q/k layout, the MLP width, the context length
    config, tensors, bf16 = read_meta_checkpoint(path)
    for hf_name, w in model.state_dict().items():
        np.testing.assert_array_equal(tensors[hf_name], w.numpy(), err_msg=hf_name)
    assert config["intermediate_size"] == model.config.intermediate_size
    assert config["max_position_embeddings"] == (16384 if case.rope_theta else 2048)
    assert (config["torch_dtype"], bool(bf16)) == (case.dtype, case.dtype == "bfloat16")


def test_convert_loads_in_transformers(meta_case, torch, tmp_path, capsys):
    import transformers

    name, case, path, model, _, ids = meta_case
    assert cli.main(["info", "--model", str(path)]) == 0  # every command takes a Meta directory as --model
    assert f"context {16384 if case.rope_theta else 2048}" in capsys.readouterr().out
    assert cli.main(["mask", "a b", "--model", str(path)]) == 0, capsys.readouterr().err
    out = tmp_path / "hf"
    assert cli.main(["convert", str(path), str(out), "--llama-version", "2"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                    "tokenizer.model", "tokenizer_config.json"]
    header, _ = read_safetensors_header(out / "model.safetensors")
    stored = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[case.dtype]
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {stored}  # not widened
    theirs = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    err = float(np.abs(transformers_logits(torch, theirs, ids) - transformers_logits(torch, model, ids)).max())
    record_parity(name, "convert: |Δlogits| in transformers", err, table="Meta checkpoints")
    assert err == 0.0, f"{name}: the converted checkpoint's logits differ by {err:.3g}"
    assert theirs.config.max_position_embeddings == (16384 if case.rope_theta else 4096)  # --llama-version 2
    np.testing.assert_array_equal(tl.load(out)(ids).logits, tl.load(path)(ids).logits)
    hf_tok, our_tok = transformers.AutoTokenizer.from_pretrained(out), tl.load_tokenizer(out)
    for text in ("In the beginning God created the heaven and the earth.", "two  spaces, ünïcödé and 🙂 (HF differs from sentencepiece on leading spaces)"):
        assert hf_tok(text)["input_ids"] == our_tok.encode(text), text


# -- Meta's reference implementation --------------------------------------------------------------
# Transcribed from meta-llama/llama, llama/model.py (the Llama 2 release; `rope_theta` as Code Llama's
# fork adds it): complex-number RoPE on Meta's interleaved q/k rows. fairscale's parallel layers are plain
# nn.Linear / nn.Embedding (one process holds the whole model) and the KV cache is left out (start_pos = 0).

def meta_reference_model(torch, params: dict, state: dict):
    nn, F = torch.nn, torch.nn.functional

    @dataclass
    class ModelArgs:
        dim: int = 4096
        n_layers: int = 32
        n_heads: int = 32
        n_kv_heads: Optional[int] = None
        vocab_size: int = -1
        multiple_of: int = 256
        ffn_dim_multiplier: Optional[float] = None
        norm_eps: float = 1e-5
        rope_theta: float = 10000.0
        max_batch_size: int = 32
        max_seq_len: int = 2048

    class RMSNorm(nn.Module):
        def __init__(self, dim: int, eps: float = 1e-6):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def _norm(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

        def forward(self, x):
            output = self._norm(x.float()).type_as(x)
            return output * self.weight

    def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
        t = torch.arange(end, device=freqs.device)
        freqs = torch.outer(t, freqs).float()
        return torch.polar(torch.ones_like(freqs), freqs)  # complex64

    def reshape_for_broadcast(freqs_cis, x):
        ndim = x.ndim
        assert freqs_cis.shape == (x.shape[1], x.shape[-1])
        shape = [d if i == 1 or i == ndim - 1 else 1 for i, d in enumerate(x.shape)]
        return freqs_cis.view(*shape)

    def apply_rotary_emb(xq, xk, freqs_cis):
        xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
        xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
        freqs_cis = reshape_for_broadcast(freqs_cis, xq_)
        xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(3)
        xk_out = torch.view_as_real(xk_ * freqs_cis).flatten(3)
        return xq_out.type_as(xq), xk_out.type_as(xk)

    def repeat_kv(x, n_rep: int):
        bs, slen, n_kv_heads, head_dim = x.shape
        if n_rep == 1:
            return x
        return x[:, :, :, None, :].expand(bs, slen, n_kv_heads, n_rep, head_dim).reshape(
            bs, slen, n_kv_heads * n_rep, head_dim)

    class Attention(nn.Module):
        def __init__(self, args: ModelArgs):
            super().__init__()
            self.n_kv_heads = args.n_heads if args.n_kv_heads is None else args.n_kv_heads
            self.n_local_heads = args.n_heads
            self.n_local_kv_heads = self.n_kv_heads
            self.n_rep = self.n_local_heads // self.n_local_kv_heads
            self.head_dim = args.dim // args.n_heads
            self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
            self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
            self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
            self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

        def forward(self, x, start_pos: int, freqs_cis, mask):
            bsz, seqlen, _ = x.shape
            xq, xk, xv = self.wq(x), self.wk(x), self.wv(x)
            xq = xq.view(bsz, seqlen, self.n_local_heads, self.head_dim)
            xk = xk.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
            xv = xv.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
            xq, xk = apply_rotary_emb(xq, xk, freqs_cis=freqs_cis)
            keys = repeat_kv(xk, self.n_rep)  # (bs, seqlen, n_local_heads, head_dim); no cache here
            values = repeat_kv(xv, self.n_rep)
            xq, keys, values = xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2)
            scores = torch.matmul(xq, keys.transpose(2, 3)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask  # (bs, n_local_heads, seqlen, cache_len + seqlen)
            scores = F.softmax(scores.float(), dim=-1).type_as(xq)
            output = torch.matmul(scores, values)  # (bs, n_local_heads, seqlen, head_dim)
            output = output.transpose(1, 2).contiguous().view(bsz, seqlen, -1)
            return self.wo(output)

    class FeedForward(nn.Module):
        def __init__(self, dim: int, hidden_dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float]):
            super().__init__()
            hidden_dim = int(2 * hidden_dim / 3)
            if ffn_dim_multiplier is not None:
                hidden_dim = int(ffn_dim_multiplier * hidden_dim)
            hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)
            self.w1 = nn.Linear(dim, hidden_dim, bias=False)
            self.w2 = nn.Linear(hidden_dim, dim, bias=False)
            self.w3 = nn.Linear(dim, hidden_dim, bias=False)

        def forward(self, x):
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    class TransformerBlock(nn.Module):
        def __init__(self, layer_id: int, args: ModelArgs):
            super().__init__()
            self.attention = Attention(args)
            self.feed_forward = FeedForward(dim=args.dim, hidden_dim=4 * args.dim, multiple_of=args.multiple_of,
                                            ffn_dim_multiplier=args.ffn_dim_multiplier)
            self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
            self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

        def forward(self, x, start_pos: int, freqs_cis, mask):
            h = x + self.attention.forward(self.attention_norm(x), start_pos, freqs_cis, mask)
            return h + self.feed_forward.forward(self.ffn_norm(h))

    class Transformer(nn.Module):
        def __init__(self, params: ModelArgs):
            super().__init__()
            self.params = params
            self.tok_embeddings = nn.Embedding(params.vocab_size, params.dim)
            self.layers = nn.ModuleList(TransformerBlock(i, params) for i in range(params.n_layers))
            self.norm = RMSNorm(params.dim, eps=params.norm_eps)
            self.output = nn.Linear(params.dim, params.vocab_size, bias=False)
            self.freqs_cis = precompute_freqs_cis(params.dim // params.n_heads, params.max_seq_len * 2,
                                                  params.rope_theta)

        @torch.inference_mode()
        def forward(self, tokens, start_pos: int = 0):
            _bsz, seqlen = tokens.shape
            h = self.tok_embeddings(tokens)
            freqs_cis = self.freqs_cis[start_pos: start_pos + seqlen]
            mask = None
            if seqlen > 1:
                mask = torch.full((1, 1, seqlen, seqlen), float("-inf"))
                mask = torch.triu(mask, diagonal=start_pos + 1).type_as(h)
            for layer in self.layers:
                h = layer(h, start_pos, freqs_cis, mask)
            h = self.norm(h)
            return self.output(h).float()

    args = ModelArgs(**{k: v for k, v in params.items() if k != "vocab_size"}, vocab_size=VOCAB, max_seq_len=64)
    model = Transformer(args)
    model.load_state_dict(state, strict=True)  # strict: Meta's FeedForward width must match the file's
    return model.eval()


def test_load_equals_metas_reference_model(meta_case, torch):
    name, _, path, _, meta, ids = meta_case
    params = json.loads((path / "params.json").read_text())
    reference = meta_reference_model(torch, params, meta)
    theirs = reference(torch.from_numpy(ids)).numpy()
    err = float(np.abs(tl.load(path)(ids).logits - theirs).max())
    record_parity(name, "|Δlogits| vs Meta's model.py", err, table="Meta checkpoints")
    assert err <= TOL_LOGITS, f"{name}: max |Δlogits| vs Meta's model.py = {err:.3g}"


def test_load_needs_no_torch(meta_case, tmp_path):
    name, _, path, _, _, ids = meta_case
    np.save(tmp_path / "ids.npy", ids)
    script = ("import sys; sys.modules['torch'] = None  # `import torch` now fails\n"
              "import numpy as np, tinyllama_ref as tl\n"
              "np.save(sys.argv[3], tl.load(sys.argv[1])(np.load(sys.argv[2])).logits)\n"
              "assert not [m for m in sys.modules if m.startswith(('torch.', 'transformers'))]\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "ids.npy"),
                           str(tmp_path / "logits.npy")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), tl.load(path)(ids).logits)


def test_torch_save_files_read_exactly(torch, tmp_path):
    """Views (transposed, sliced with an offset), shared storages, parameters and every dtype read as torch has them."""
    base = torch.randn(4, 6)
    state = {"t": base.t(), "rows": base[1:3], "cols": base[:, 2:5], "bf16": torch.randn(3, 5).to(torch.bfloat16),
             "f16": torch.randn(7).half(), "f64": torch.randn(2, 2).double(), "i64": torch.arange(5),
             "bool": torch.tensor([True, False]), "param": torch.nn.Parameter(torch.randn(3)), "empty": torch.zeros(0, 3)}
    torch.save(state, tmp_path / "x.pth")
    tensors, bf16 = read_torch_file(tmp_path / "x.pth")
    assert bf16 == {"bf16"}
    for name, value in state.items():
        expected = value.detach().float() if name == "bf16" else value.detach()
        assert tensors[name].dtype == expected.numpy().dtype, name
        np.testing.assert_array_equal(tensors[name], expected.numpy(), err_msg=name)
    legacy = tmp_path / "legacy.pth"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy.pth: written in torch.save's legacy format"):
        read_torch_file(legacy)


def copy_meta_dir(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(path, out)
    return out


def test_bad_meta_directories_get_errors_naming_the_problem(torch, tmp_path):
    case = CASES["gqa, ffn_dim_multiplier, 2 shards, bfloat16"]
    meta = hf_to_meta(torch, hf_model(torch, case, seed=1).state_dict(), case)
    path = write_meta_dir(torch, tmp_path / "good", meta, case)
    tl.load(path)

    bad = copy_meta_dir(path, tmp_path / "norm")
    shard = torch.load(bad / "consolidated.01.pth")
    shard["layers.1.ffn_norm.weight"] = shard["layers.1.ffn_norm.weight"] + 1
    torch.save(shard, bad / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth: tensor 'layers\.1\.ffn_norm\.weight' is "
                                              r"replicated in every shard but differs"):
        tl.load(bad)

    bad = copy_meta_dir(path, tmp_path / "unknown")
    shard = torch.load(bad / "consolidated.00.pth")
    shard["layers.0.attention.wx.weight"] = torch.zeros(2, 2)
    torch.save(shard, bad / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="consolidated.01.pth: its tensors differ"):
        tl.load(bad)
    torch.save(shard, bad / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match="tensor 'layers.0.attention.wx.weight' has no counterpart"):
        tl.load(bad)

    bad = copy_meta_dir(path, tmp_path / "params")
    params = json.loads((bad / "params.json").read_text())
    (bad / "params.json").write_text(json.dumps(dict(params, multiple_of=64)))  # a different MLP width
    with pytest.raises(CheckpointError, match="mlp.gate_proj.weight' has shape .* but the config needs"):
        tl.load(bad)

    (bad / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match="vocab_size is -1"):
        tl.load(bad)
