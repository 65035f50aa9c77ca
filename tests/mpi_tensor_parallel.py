"""Run under `mpirun -n N`: tensor parallelism over N real MPI ranks against one process, in one job.

    mpirun -n 2 python tests/mpi_tensor_parallel.py parity OUT.json   # hypothesis configs, Meta's shards
    mpirun -n 2 python tests/mpi_tensor_parallel.py memory OUT.json DIR   # resident memory per rank
    mpirun -n 2 python tests/mpi_tensor_parallel.py gpu OUT.json 1    # real CuPy, NCCL, one GPU per rank

`parity`: rank 0 runs a hypothesis test; each drawn case (a config, a file format, NumPy or the CuPy
double with MPI underneath) is broadcast to the other ranks, which run it too. Every rank loads the
checkpoint with `tensor_parallel="mpi"` and, for the reference, whole in one process; it compares the
prefill logits and a KV-cache decode, and rank 0 checks that every rank got the same bits. Then a Meta
checkpoint of N shards, each rank recording the files it opens. Rank 0 writes what it measured to
OUT.json; tests/test_tensor_parallel.py starts these jobs and reads it.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
from mpi4py import MPI

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import cupy_double  # noqa: E402

import tinyllama_ref as tl  # noqa: E402
from tinyllama_ref.backend import to_numpy  # noqa: E402
from tinyllama_ref.formats.checkpoint import random_tensors  # noqa: E402
from tinyllama_ref.formats.qk_permutation import permute_qk  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
TOL = 1e-5  # max |Δlogits| in float32, tensor-parallel against one process
ROPE = {"default": None, "linear": {"rope_type": "linear", "factor": 2.0},
        "dynamic": {"rope_type": "dynamic", "factor": 2.0},
        "yarn": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16},
        "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 16}}



def use_the_double() -> None:
    """The CuPy double stands in for CuPy on every rank; its cupyx.distributed does NCCL's collectives with MPI."""
    sys.modules.update({"cupy": cupy_double, "cupyx": cupy_double.cupyx,
                        "cupyx.distributed": cupy_double.cupyx.distributed})
    cupy_double.cuda.runtime.getDeviceCount = lambda: SIZE  # one "GPU" per rank


def shared_dir() -> Path:
    """One temporary directory for the whole job (rank 0 makes it, every rank gets its name)."""
    return Path(COMM.bcast(tempfile.mkdtemp(prefix="tp-") if RANK == 0 else None, root=0))


# -- checkpoints in each format, written by rank 0 -----------------------------------------------------

def write_hf(config, tensors, out: Path, shard: bool) -> Path:
    tl.build_model(config, tensors).save_pretrained(out, max_shard_size="20KB" if shard else "50GB")
    return out


GGUF_PARTS = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gguf(config, tensors, out: Path, qtype: str) -> Path:
    """A GGUF file as llama.cpp's converter writes one (gguf-py): q/k rows interleaved, llama.cpp's names."""
    import gguf

    c = config
    w = gguf.GGUFWriter(str(out), "llama")
    for key, value in {"context_length": c.max_position_embeddings, "embedding_length": c.hidden_size,
                       "block_count": c.num_hidden_layers, "feed_forward_length": c.intermediate_size,
                       "attention.head_count": c.num_attention_heads, "vocab_size": c.vocab_size,
                       "attention.head_count_kv": c.num_key_value_heads, "attention.key_length": c.head_dim,
                       "rope.dimension_count": c.head_dim}.items():
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.rope.freq_base", c.rope_theta)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    for name, arr in tensors.items():
        stem, kind = name.rsplit(".", 1)
        if stem.startswith("model.layers."):
            _, _, i, part = stem.split(".", 3)
            gname = f"blk.{i}.{GGUF_PARTS[part]}.{kind}"
        else:
            gname = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}[stem] + "." + kind
        if ".q_proj." in name or ".k_proj." in name:
            arr = permute_qk(arr, c.num_attention_heads if ".q_proj." in name else c.num_key_value_heads)
        quantized = qtype != "F32" and arr.ndim == 2 and arr.shape[1] % 32 == 0  # else F32, as llama.cpp falls back
        w.add_tensor(gname, gguf.quantize(arr, getattr(gguf.GGMLQuantizationType, qtype)) if quantized else arr,
                     raw_dtype=getattr(gguf.GGMLQuantizationType, qtype) if quantized else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


META_NAMES = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
              "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
              "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
              "post_attention_layernorm": "ffn_norm"}
META_AXIS = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


def write_meta(params: dict, tensors: dict, config, out: Path, shards: int) -> Path:
    """Meta's layout, as fairscale's layers cut it (written independently of tinyllama_ref.formats.meta)."""
    import torch

    out.mkdir()
    (out / "params.json").write_text(json.dumps(params))
    meta = {}
    for name, arr in tensors.items():
        stem = name.rsplit(".", 1)[0]
        if stem.startswith("model.layers."):
            _, _, i, part = stem.split(".", 3)
            mname = f"layers.{i}.{META_NAMES[part]}.weight"
        else:
            mname = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output"}[stem] + ".weight"
        if ".q_proj." in name or ".k_proj." in name:
            arr = permute_qk(arr, config.num_attention_heads if ".q_proj." in name else config.num_key_value_heads)
        meta[mname] = arr
    for r in range(shards):
        shard = {}
        for mname, arr in meta.items():
            axis = META_AXIS.get(mname.rsplit(".", 2)[-2])
            shard[mname] = torch.from_numpy(np.ascontiguousarray(
                arr if axis is None else np.split(arr, shards, axis=axis)[r])).to(torch.bfloat16)
        torch.save(shard, out / f"consolidated.{r:02d}.pth")
    return out


# -- one case, on every rank ------------------------------------------------------------------------

def compare(path: Path, backend: str, ids: np.ndarray, split: int) -> dict:
    """Tensor-parallel against one process on the same file: prefill, then cached decoding token by token."""
    whole = tl.load(path)
    ref = whole(ids).logits
    model = tl.load(path, backend="numpy" if backend == "numpy" else "cupy", tensor_parallel="mpi")
    logits = to_numpy(model(ids).logits)
    out = model(ids[:, :split], use_cache=True)
    steps = [to_numpy(out.logits)]
    for i in range(split, ids.shape[1]):
        out = model(ids[:, i:i + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(to_numpy(out.logits))
    decoded = np.concatenate(steps, axis=1)
    digests = COMM.gather(logits.tobytes() + decoded.tobytes(), root=0)
    return {"prefill": float(np.abs(logits - ref).max()), "decode": float(np.abs(decoded - ref).max()),
            "max_logit": float(np.abs(ref).max()),
            "same_bits_on_every_rank": RANK != 0 or len(set(digests)) == 1,
            "cache_heads": out.past_key_values.keys[0].shape[1]}


def run_case(case: dict, root: Path) -> dict:
    """Every rank: rank 0 writes the checkpoint, all compare. Errors are returned, not raised (no rank hangs)."""
    path = root / f"case{case['n']}" / ("model.gguf" if case["format"].startswith("gguf") else "hf")
    try:
        config = tl.LlamaConfig(**case["config"])
        tensors = random_tensors(config, seed=case["seed"], std=config.hidden_size ** -0.5)  # logits of order 1
        written = None
        if RANK == 0:
            try:
                path.parent.mkdir()
                if case["format"].startswith("gguf"):
                    write_gguf(config, tensors, path, case["format"].split("-")[1])
                else:
                    write_hf(config, tensors, path, shard=case["format"] == "bf16-sharded")
            except Exception:  # noqa: BLE001 - every rank hears of it, so none waits for the others
                written = traceback.format_exc()
        written = COMM.bcast(written, root=0)
        if written:
            raise RuntimeError(f"writing the checkpoint failed on rank 0:\n{written}")
        ids = np.random.default_rng(case["seed"]).integers(0, config.vocab_size, (case["batch"], case["seq"]))
        result = compare(path, case["backend"], ids, split=case["seq"] // 2)
    except Exception:  # noqa: BLE001 - reported by rank 0, with the rank that failed
        result = {"error": traceback.format_exc()}
    results = COMM.gather(result, root=0)
    COMM.Barrier()
    if RANK == 0:
        shutil.rmtree(path.parent, ignore_errors=True)
    return results


# (file, backend, RoPE, head): each job runs every variant, on configs that hypothesis draws.
VARIANTS = [("f32", "numpy", "default", "separate"), ("bf16-sharded", "double", "linear", "tied"),
            ("gguf-F32", "numpy", "default", "tied"), ("gguf-Q8_0", "double", "default", "separate"),
            ("f32", "double", "dynamic", "open-llama shared"), ("bf16-sharded", "numpy", "yarn", "separate"),
            ("f32", "numpy", "llama3", "tied"), ("gguf-Q8_0", "numpy", "default", "tied"),
            ("f32", "double", "longrope", "separate"), ("bf16-sharded", "numpy", "default", "open-llama")]


def draw_case(draw, n: int, variant: tuple) -> dict:
    from hypothesis import strategies as st

    fmt, backend, rope, head = variant
    if fmt.startswith("gguf"):
        try:
            import gguf  # noqa: F401
        except ImportError:
            fmt = "f32"  # gguf-py writes the files: without it, safetensors
    kv = SIZE * draw(st.sampled_from([1, 2]))
    heads = kv * draw(st.sampled_from([1, 2, 3]))  # MHA, GQA; MQA is kv = 1 (N = 1 only)
    head_dim = draw(st.sampled_from([4, 8]))
    quantized = fmt == "gguf-Q8_0"
    config = dict(vocab_size=draw(st.integers(SIZE, 70)), hidden_size=32 * heads if quantized else heads * head_dim,
                  intermediate_size=32 * draw(st.integers(1, 2)) if quantized else draw(st.integers(SIZE, 40)),
                  num_hidden_layers=draw(st.integers(1, 2)), num_attention_heads=heads, num_key_value_heads=kv,
                  head_dim=head_dim, max_position_embeddings=64, rms_norm_eps=1e-5,
                  torch_dtype="bfloat16" if fmt == "bf16-sharded" else None,
                  attention_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()), tie_word_embeddings=head == "tied",
                  rope_scaling=ROPE[rope] if rope != "longrope" else {
                      "rope_type": "longrope", "original_max_position_embeddings": 16,
                      "short_factor": [1.0 + i / head_dim for i in range(head_dim // 2)],
                      "long_factor": [2.0 + i / head_dim for i in range(head_dim // 2)]})
    if head.startswith("open-llama"):
        config.update(model_type="open-llama", architectures=["OpenLlamaForCausalLM"], use_stable_embedding=True,
                      shared_input_output_embedding=head.endswith("shared"))
    return {"n": n, "config": config, "format": fmt, "seed": draw(st.integers(0, 2**16)), "backend": backend,
            "batch": draw(st.integers(1, 2)), "seq": draw(st.integers(2, 12)), "head": head}


def parity(out_file: Path, examples: int, gpu: bool = False) -> None:
    """`examples` hypothesis cases for each variant, run by every rank; rank 0 writes the report. `gpu`: the
    CuPy variants on real CuPy (NCCL, one GPU per rank) instead of the double."""
    variants = [(f, "cupy", r, h) for f, b, r, h in VARIANTS if b == "double"] if gpu else VARIANTS
    if not gpu:
        use_the_double()
    root = shared_dir()
    report = {"ranks": SIZE, "cases": [], "meta": None}
    if RANK == 0:
        from hypothesis import HealthCheck, given, settings, strategies as st

        counter = iter(range(10**6))  # names the cases' directories

        def check_variant(variant):
            @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(st.data())
            def check(data):
                case = draw_case(data.draw, next(counter), variant)
                COMM.bcast(case, root=0)
                results = run_case(case, root)
                report["cases"].append({"case": case, "results": results})
                errors = [r["error"] for r in results if "error" in r]
                assert not errors, errors[0]
                assert all(r["prefill"] <= TOL and r["decode"] <= TOL for r in results), results
                assert results[0]["same_bits_on_every_rank"]

            check()

        try:
            for variant in variants:
                check_variant(variant)
        except Exception:  # noqa: BLE001 - written to the report; the test prints it
            report["failure"] = traceback.format_exc()
        COMM.bcast(None, root=0)
    else:
        while (case := COMM.bcast(None, root=0)) is not None:
            run_case(case, root)
    report["meta"] = meta_shards(root)
    report["refused"] = refused(root)
    COMM.Barrier()  # rank 0 removes `root` next: every rank must be done reading from it (4 ranks on 2 cores lag)
    if RANK == 0:
        out_file.write_text(json.dumps(report, indent=1))
        shutil.rmtree(root, ignore_errors=True)


def meta_shards(root: Path) -> dict | None:
    """A Meta checkpoint of N shards (bfloat16) on N ranks: each opens its own consolidated.0r.pth, no other."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skipped": "torch is not installed: the shards are written with torch.save"}
    from tinyllama_ref.formats.meta import config_from_params

    params = {"dim": 32 * SIZE, "n_layers": 2, "n_heads": 2 * SIZE, "n_kv_heads": SIZE, "multiple_of": 16,
              "norm_eps": 1e-5, "vocab_size": 40 * SIZE}
    config = tl.LlamaConfig.from_dict(config_from_params(params, None, "2"))
    path = root / "meta"
    if RANK == 0:
        tensors = random_tensors(config, seed=7, std=0.1)
        write_meta(params, tensors, config, path, SIZE)
    COMM.Barrier()
    opened = []

    def audit(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, Path)) and "consolidated" in str(args[0]):
            opened.append(Path(str(args[0])).name)

    ids = np.random.default_rng(3).integers(0, config.vocab_size, (2, 9))
    try:
        sys.addaudithook(audit)  # from here on, for the rest of the job: the whole load comes after `opened` is read
        model = tl.load(path, tensor_parallel="mpi")
        mine = sorted(set(opened))
        logits = model(ids).logits
        ref = tl.load(path)(ids).logits
        result = {"opened": mine, "max_abs": float(np.abs(logits - ref).max())}
    except Exception:  # noqa: BLE001
        result = {"error": traceback.format_exc()}
    results = COMM.gather(result, root=0)
    return {"ranks": results} if RANK == 0 else None


def refused(root: Path) -> list[str]:
    """Models the ranks cannot share are refused, each with one clear line."""
    messages = []
    config = tl.LlamaConfig(vocab_size=20, hidden_size=8 * (SIZE + 1), intermediate_size=16,
                            num_hidden_layers=1, num_attention_heads=SIZE + 1, num_key_value_heads=SIZE + 1)
    path = root / "odd"
    if RANK == 0:
        write_hf(config, random_tensors(config), path, shard=False)
    COMM.Barrier()
    try:
        tl.load(path, tensor_parallel="mpi")
    except tl.ConfigError as e:
        messages.append(str(e))
    return messages


def memory(out_file: Path, path: Path) -> None:
    """Resident memory per rank after loading `path` and one forward. The test writes the checkpoint before
    the job, so that no rank's allocator holds freed memory to reuse."""
    import gc

    gc.collect()
    before = rss()
    model = tl.load(path, tensor_parallel="mpi")
    model(np.arange(16)[None] % model.config.vocab_size)
    gc.collect()
    after = rss()
    held = sum(int(a.nbytes) for a in {id(a): a for a in _arrays(model.params)}.values())
    results = COMM.gather({"rss_before": before, "rss_after": after, "params_bytes": held}, root=0)
    if RANK == 0:
        out_file.write_text(json.dumps({"ranks": SIZE, "per_rank": results}, indent=1))


def _arrays(tree):
    from tinyllama_ref.formats.checkpoint import flatten

    return list(flatten(tree).values())


def rss() -> dict:
    """This process's resident memory (bytes): all of it, anonymous, file-backed, and the peak."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def summary(report: Path) -> str:
    """One line for benchmarks/gpu_check.sh: how many cases, the worst error, or the failure."""
    r = json.loads(report.read_text())
    if "failure" in r:
        return "FAILED: " + r["failure"].strip().splitlines()[-1]
    worst = max(x[k] for c in r["cases"] for x in c["results"] for k in ("prefill", "decode"))
    return f"{len(r['cases'])} cases on {r['ranks']} ranks, max |Δlogits| {worst:.1e} (tolerance {TOL:g})"


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "summary":
        print(summary(out))
        raise SystemExit(0)
    if mode in ("parity", "gpu"):
        parity(out, int(sys.argv[3]) if len(sys.argv) > 3 else 2, gpu=mode == "gpu")
    elif mode == "memory":
        memory(out, Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}: parity, memory or gpu")
