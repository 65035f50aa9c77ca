"""Tensor parallelism: a model spread over N ranks gives one process's logits (float32: max |Δ| <= 1e-5).

Two kinds of ranks:
- threads of this process (tests/thread_ranks.py), so that the plain `pytest` checks the split, the
  uneven cuts (N = 3) and the refusals without MPI;
- real MPI ranks: a few `mpirun` jobs (tests/mpi_tensor_parallel.py), each running many cases inside the
  ranks: hypothesis-drawn configs on 2 and 4 ranks (GQA, biases, tied and Open-Llama heads, RoPE scalings,
  float32/bfloat16-sharded safetensors and F32/Q8_0 GGUF, NumPy and the CuPy double with MPI under its
  NCCL), KV-cache decoding, a Meta checkpoint of N shards (each rank opens its own only), the resident
  memory per rank, and the command line (rank 0 prints the text one process prints).
The MPI tests skip, saying why, where MPI or mpi4py is missing; .ci/run's last step installs both.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinyllama_ref as tl
from conftest import record_parity
from thread_ranks import run_ranks
from tinyllama_ref import tensor_parallel as T
from tinyllama_ref.formats.checkpoint import random_tensors
from tinyllama_ref.formats.gguf import dequantize_tensor
from tinyllama_ref.formats.gguf_file import GGUFTensor
from tinyllama_ref.formats.meta import META_GLOBAL_PARTS, META_LAYER_PARTS

REPO = Path(__file__).resolve().parent.parent
TOL = 1e-5  # max |Δlogits|, float32, N ranks against one process
TABLE = "tensor parallel: N ranks against one process"


# -- the split itself ---------------------------------------------------------------------------------

def test_the_split_is_the_one_metas_shards_use():
    for part, (hf, axis) in {**META_LAYER_PARTS, **META_GLOBAL_PARTS}.items():
        name = f"model.layers.0.{hf}.weight" if part in META_LAYER_PARTS else f"{hf}.weight"
        assert T.split_axis(name) == axis, name


@given(st.integers(0, 200), st.integers(1, 9))
def test_the_parts_tile_every_axis_once(n, size):
    parts = [T.part(n, r, size) for r in range(size)]
    assert [p.start for p in parts[1:]] == [p.stop for p in parts[:-1]] and parts[0].start == 0 and parts[-1].stop == n
    assert T.sizes(n, size) == [p.stop - p.start for p in parts] and max(T.sizes(n, size)) - min(T.sizes(n, size)) <= 1


@st.composite
def configs(draw, size: int):
    kv = size * draw(st.sampled_from([1, 2]))
    heads = kv * draw(st.sampled_from([1, 2, 3]))
    head_dim = draw(st.sampled_from([4, 8]))
    config = dict(vocab_size=draw(st.integers(size, 50)), hidden_size=heads * draw(st.sampled_from([head_dim, head_dim + 2])),
                  intermediate_size=draw(st.integers(size, 30)), num_hidden_layers=draw(st.integers(1, 2)),
                  num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, max_position_embeddings=64,
                  attention_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()),
                  tie_word_embeddings=draw(st.booleans()))
    if draw(st.booleans()):
        config.update(model_type="open-llama", architectures=["OpenLlamaForCausalLM"], use_stable_embedding=True,
                      shared_input_output_embedding=config.pop("tie_word_embeddings"))
    return tl.LlamaConfig(**config)


def spread(path, size, ids, split, backend="numpy"):
    """Each of `size` thread ranks loads `path` and returns (prefill logits, cached decode logits), on the host."""
    def rank(comm):
        model = tl.load(path, backend=backend, tensor_parallel=comm)
        logits = tl.backend.to_numpy(model(ids).logits)
        out = model(ids[:, :split], use_cache=True)
        steps = [out.logits]
        for i in range(split, ids.shape[1]):
            out = model(ids[:, i:i + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
        return logits, np.concatenate([tl.backend.to_numpy(s) for s in steps], axis=1)

    return run_ranks(size, rank)


@settings(max_examples=12, deadline=None)
@given(data=st.data(), size=st.sampled_from([2, 3]))
def test_threads_as_ranks_give_one_process_logits(tmp_path_factory, data, size):
    """Uneven cuts too: N = 3 splits vocabularies and MLP widths that 3 does not divide."""
    config = data.draw(configs(size))
    path = tmp_path_factory.mktemp("tp")
    tl.build_model(config, random_tensors(config, seed=1, std=config.hidden_size ** -0.5)).save_pretrained(path)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, data.draw(st.integers(2, 9))))
    ref = tl.load(path)(ids).logits
    results = spread(path, size, ids, split=ids.shape[1] // 2)
    for prefill, decoded in results:
        assert np.abs(prefill - ref).max() <= TOL and np.abs(decoded - ref).max() <= TOL
        assert np.array_equal(prefill, results[0][0]), "every rank holds the same logits"


def test_threads_as_ranks_on_the_cupy_double(tmp_path, double):
    config = tl.LlamaConfig(vocab_size=41, hidden_size=24, intermediate_size=30, num_hidden_layers=2,
                            num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)
    tl.build_model(config, random_tensors(config, std=0.2)).save_pretrained(tmp_path)
    ids = np.arange(14).reshape(2, 7) % 41
    ref = tl.load(tmp_path)(ids).logits
    for prefill, decoded in spread(tmp_path, 2, ids, split=3, backend="cupy"):
        assert np.abs(prefill - ref).max() <= TOL and np.abs(decoded - ref).max() <= TOL


def test_each_rank_runs_the_books_forward_and_its_one_layer(tmp_path, monkeypatch):
    """The split is operations handed to the one layer (`model.layer_ops`), not a second layer: on 2 ranks,
    `llama.forward` runs once per rank and `llama.decoder_layer` once per layer per rank."""
    from tinyllama_ref import llama

    config = tl.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2)
    tl.build_model(config, random_tensors(config)).save_pretrained(tmp_path)
    calls = {"forward": 0, "decoder_layer": 0}

    def counted(name, fn):
        def run(*args, **kwargs):
            calls[name] += 1  # two threads may add at once: += on a dict item holds the GIL throughout
            return fn(*args, **kwargs)
        return run

    monkeypatch.setattr(llama, "forward", counted("forward", llama.forward))
    monkeypatch.setattr(llama, "decoder_layer", counted("decoder_layer", llama.decoder_layer))
    ops = run_ranks(2, lambda comm: (lambda m: (m([[1, 2, 3]]), m.ops)[1])(tl.load(tmp_path, tensor_parallel=comm)))
    assert calls == {"forward": 2, "decoder_layer": 2 * 3}
    assert ops[0].column_linear is llama.linear and ops[0].row_linear is not llama.linear
    assert ops[0].rms_norm is llama.rms_norm and ops[0].apply_rope is llama.apply_rope


def test_int4_on_ranks_equals_int4_in_one_process(tmp_path):
    """int4's groups of inputs fall inside a rank's columns, so its codes and scales are one process's."""
    config = tl.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    tl.build_model(config, random_tensors(config, std=0.125)).save_pretrained(tmp_path)
    ids = np.arange(10)[None] % 64
    ref = tl.load(tmp_path, quantize="int4", group_size=16)(ids).logits
    for logits in run_ranks(2, lambda c: tl.load(tmp_path, quantize="int4", group_size=16, tensor_parallel=c)(ids).logits):
        assert np.abs(logits - ref).max() <= TOL


def test_a_decode_step_on_ranks_moves_one_copy_up_and_one_down_per_rank(tmp_path, double):
    """On the CuPy double, the collectives stay on the device: a rank's step costs what one process's costs."""
    config = tl.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    tl.build_model(config, random_tensors(config)).save_pretrained(tmp_path)

    def rank(comm):
        model = tl.load(tmp_path, backend="cupy", tensor_parallel=comm)
        cache = model(np.arange(6)[None], use_cache=True).past_key_values
        comm.all_gather(model.xp.zeros(1))  # every rank has prefilled
        if comm.rank == 0:
            double.transfers.reset()
        comm.all_gather(model.xp.zeros(1))
        model(np.array([[5]]), past_key_values=cache, use_cache=True).logits[:, -1].get()

    run_ranks(2, rank)
    assert (double.transfers.to_device, double.transfers.to_host) == (2, 2), double.transfers.report()


def test_a_rank_holds_its_share_of_the_weights(tmp_path):
    config = tl.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    tl.build_model(config, random_tensors(config)).save_pretrained(tmp_path)
    whole = tl.load(tmp_path).get_memory_footprint()
    norms = 4 * 32 * (2 * 2 + 1)  # float32 RMSNorm weights: every rank holds them whole
    shares = run_ranks(2, lambda comm: tl.load(tmp_path, tensor_parallel=comm).get_memory_footprint())
    assert shares == [(whole - norms) // 2 + norms] * 2


def test_what_the_ranks_cannot_share_is_refused_in_one_line(tmp_path):
    config = tl.LlamaConfig(vocab_size=20, hidden_size=24, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=3, num_key_value_heads=3)
    tl.build_model(config, random_tensors(config)).save_pretrained(tmp_path)
    with pytest.raises(tl.ConfigError, match=r"over 2 ranks needs num_key_value_heads \(3\) divisible by 2"):
        run_ranks(2, lambda comm: tl.load(tmp_path, tensor_parallel=comm))
    with pytest.raises(ValueError, match="the one choice is 'mpi'"):
        tl.load(tmp_path, tensor_parallel="nccl")
    with pytest.raises(ValueError, match="merge it first"):
        tl.load(tmp_path, tensor_parallel="mpi", adapter=tmp_path)
    with pytest.raises(ValueError, match="use quantize='int4'"):
        tl.load(tmp_path, tensor_parallel="mpi", quantize="int8")
    model = run_ranks(1, lambda comm: tl.load(tmp_path, tensor_parallel=comm))[0]
    with pytest.raises(tl.InputError, match="save_pretrained needs the whole model"):
        model.save_pretrained(tmp_path / "out")


@pytest.mark.parametrize("kind, block, nbytes", [("Q8_0", 32, 34), ("F16", 1, 2)])
def test_a_gguf_slice_decodes_only_its_blocks_and_equals_the_whole_sliced(kind, block, nbytes):
    rng = np.random.default_rng(0)
    rows, cols = 6, 4 * 32
    raw = rng.integers(0, 256, (rows, cols // block * nbytes), dtype=np.uint8)
    if kind == "Q8_0":  # a finite float16 scale at the head of every block
        raw.reshape(-1, nbytes)[:, :2] = np.frombuffer(rng.uniform(-1, 1, rows * cols // 32).astype("<f2").tobytes(),
                                                       np.uint8).reshape(-1, 2)
    else:
        raw[:] = np.frombuffer(rng.uniform(-1, 1, rows * cols).astype("<f2").tobytes(), np.uint8).reshape(rows, -1)
    tensor = GGUFTensor("w", (rows, cols), {"Q8_0": 8, "F16": 1}[kind], raw)
    whole = dequantize_tensor(tensor)
    for index in [(slice(2, 5), slice(None)), (slice(None), slice(45, 83)), (slice(1, 6), slice(0, 1))]:
        assert np.array_equal(dequantize_tensor(tensor, index=index), whole[index])
    vector = GGUFTensor("b", (cols,), tensor.ggml_type, raw[0])
    assert np.array_equal(dequantize_tensor(vector, index=(slice(7, 70),)), whole[0, 7:70])


# -- real MPI ranks -----------------------------------------------------------------------------------

def _mpi_missing() -> str | None:
    if shutil.which("mpirun") is None:
        return "mpirun is not installed"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=f"{_mpi_missing()}: the tensor-parallel tests "
                               f"across processes run under mpirun (apt-get install openmpi-bin libopenmpi-dev, then "
                               f"pip install mpi4py; .ci/run's last step does)")


def mpirun(n: int, *command: str, timeout: int = 600, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`mpirun -n N command` with Open MPI's flags for a small machine (more ranks than cores; root in CI)."""
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = ["mpirun", "--oversubscribe", *root, "-n", str(n), "-x", "PYTHONPATH", "-x", "OMP_NUM_THREADS",
           "-x", "OPENBLAS_NUM_THREADS", *command]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=stdin or "")


def run_script(n: int, mode: str, out: Path, *extra: str) -> dict:
    done = mpirun(n, sys.executable, str(REPO / "tests" / "mpi_tensor_parallel.py"), mode, str(out), *extra)
    assert done.returncode == 0 and out.is_file(), f"mpirun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(out.read_text())


def variants(case: dict) -> list[str]:
    """The rows of the parity table a case counts in: its file and backend, and each feature it has."""
    c = case["config"]
    rows = [f"{case['format']}, {case['backend']}"]
    rows += ["GQA (heads > kv heads)"] if c["num_attention_heads"] > c["num_key_value_heads"] else ["MHA"]
    rows += ["biases"] if c.get("attention_bias") or c.get("mlp_bias") else []
    rows += [f"head: {case['head']}", f"rope {(c.get('rope_scaling') or {}).get('rope_type', 'default')}"]
    return rows


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_mpi_ranks_give_one_process_logits(tmp_path, ranks):
    report = run_script(ranks, "parity", tmp_path / "report.json", "2")  # 2 cases of each of 10 variants
    assert "failure" not in report, report["failure"]
    assert len(report["cases"]) >= 20
    for entry in report["cases"]:
        for row in variants(entry["case"]):
            for column in ("prefill", "decode"):
                record_parity(f"N={ranks} {row}", f"max|Δ| {column}", max(r[column] for r in entry["results"]), TABLE)
    meta = report["meta"]
    if "skipped" not in meta:
        assert [r.get("opened") for r in meta["ranks"]] == [[f"consolidated.{r:02d}.pth"] for r in range(ranks)], meta
        assert max(r["max_abs"] for r in meta["ranks"]) <= TOL
        record_parity(f"N={ranks} Meta consolidated.0r.pth, bfloat16", "max|Δ| prefill",
                      max(r["max_abs"] for r in meta["ranks"]), TABLE)
    assert report["refused"] and all(f"divisible by {ranks}" in m for m in report["refused"])


@needs_mpi
def test_each_rank_holds_about_half_of_the_weights_on_two_ranks(tmp_path):
    """Resident memory (VmRSS) after the load and one forward, over the float32 weights' bytes: 1/2 each."""
    config = tl.LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                            num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64)
    model = tl.build_model(config, random_tensors(config))
    weights = model.get_memory_footprint()  # 127 MiB in float32
    model.save_pretrained(tmp_path / "model")
    report = run_script(2, "memory", tmp_path / "memory.json", str(tmp_path / "model"))
    for rank, r in enumerate(report["per_rank"]):
        grown = r["rss_after"]["VmRSS"] - r["rss_before"]["VmRSS"]
        print(f"rank {rank}: RSS +{grown / 2**20:.1f} MiB for {weights / 2**20:.1f} MiB of weights "
              f"({grown / weights:.3f}); its params {r['params_bytes'] / 2**20:.1f} MiB")
        assert weights / 2 * 0.95 <= grown <= weights / 2 * 1.1 + 8 * 2**20


CLI = [sys.executable, "-m", "tinyllama_ref.cli"]


@needs_mpi
@pytest.mark.parametrize("command, stdin", [
    (["generate", "Once upon a time", "-n", "30", "--seed", "0"], None),
    (["chat", "-n", "10", "--seed", "3"], "In the beginning\nAnd God said\n"),
    (["perplexity", str(REPO / "README.md"), "--max-length", "64", "--stride", "32"], None),
])
def test_the_command_line_on_two_ranks_prints_what_one_process_prints(command, stdin):
    one = subprocess.run(CLI + command, capture_output=True, text=True, timeout=300, input=stdin or "",
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    two = mpirun(2, *CLI, *command, "--tensor-parallel", stdin=stdin, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    if command[0] == "perplexity":  # a number: float32 sums in another order, the 8th digit may move
        ppl = [float(out.stdout.split("perplexity:")[-1]) for out in (one, two)]
        assert abs(ppl[1] - ppl[0]) <= 1e-6 * ppl[0], ppl
    else:
        assert two.stdout == one.stdout and two.stdout.strip()
    assert two.stderr.count("prefill:") == one.stderr.count("prefill:")  # rank 0's speed lines, no others'
