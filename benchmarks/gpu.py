"""GPU speed, side by side: tinyllama_ref on CuPy against HF transformers on torch (eager and sdpa), same GPU.

For each shape: prefill tokens/s (one forward over a 512-token prompt, best of 3) and decode
tokens/s (greedy, batch 1, 128 new tokens from the KV cache), plus the memory-bandwidth limit for decode: the weight
bytes read per token divided by the measured device-to-device copy bandwidth. Also, per shape: the peak
device memory each implementation used beyond the (shared) weights, how far the peers' logits are from
ours in the timed dtype, and in float32 on a short prompt (parity), and the issue-14 targets met or not.

Shapes (random weights generated on the device, identical for both implementations: transformers reads
ours through DLPack, so the weights sit in memory once):
  llama2-7b      hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000
  tinyllama-1.1b hidden 2048, 22 layers, 32 heads / 4 kv heads, intermediate 5632
  smollm2-135m   hidden 576, 30 layers, 9 heads / 3 kv heads, intermediate 1536, vocab 49152, tied

    python benchmarks/gpu.py                              # all shapes, float16
    python benchmarks/gpu.py --shapes tinyllama-1.1b --new-tokens 32
    python benchmarks/gpu.py --out table.md               # also write the table as Markdown
    python benchmarks/gpu.py --cpu-smoke                  # tiny shapes on NumPy + torch CPU, to test the script

Needs cupy (pip install -e ".[gpu]") and torch + transformers (".[parity]"); benchmarks/gpu_check.sh installs
them and runs this with the GPU tests.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from timing import last_position, time_greedy  # benchmarks/timing.py, beside this script

SHAPES = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "tinyllama-1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
    "smoke": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
}
# Issue 14's targets, on one GPU, float16, batch 1.
TARGET_BW_7B, TARGET_VS_EAGER_7B, TARGET_TINYLLAMA_TOKS = 60, 3.0, 300
TARGET_PARITY = {"float16": 1e-2, "float32": 1e-4}
PARITY_PROMPT = 64  # tokens of the float32 parity forward


def on_gpu(xp) -> bool:
    return xp.__name__ == "cupy"


def sync(xp):
    if on_gpu(xp):
        xp.cuda.Device().synchronize()


def prompt(config, n: int):
    import numpy as np

    return ((np.arange(n) * 7919 + 11) % config.vocab_size)[None]  # host ids: checked there, one copy up


def memory_start(xp):
    """Device bytes held now (the weights), with CuPy's pool emptied, so that its size later is the peak."""
    if not on_gpu(xp):
        return None
    pool = xp.get_default_memory_pool()
    pool.free_all_blocks()
    return pool.used_bytes()


def memory_peak_mib(xp, start):
    """Peak MiB above `start`: the pool keeps the blocks it grew to (its high-water mark)."""
    return None if start is None else (xp.get_default_memory_pool().total_bytes() - start) / 2**20


def bench_ours(config, tensors, backend, dtype, prompt_tokens, new_tokens):
    import numpy as np

    import tinyllama_ref as tl
    from tinyllama_ref.backend import to_numpy

    model = tl.build_model(config, tensors, backend=backend, dtype=dtype)
    xp = model.xp
    ids = prompt(config, prompt_tokens)
    model(ids[:, :8])  # warm-up (kernel compilation, cuBLAS handles)
    sync(xp)
    start = memory_start(xp)
    prefill_s, decode_s, tokens, logits = time_greedy(
        lambda: last_position(model(ids, use_cache=True, logits_to_keep=1)),
        lambda token, cache: last_position(model([[token]], past_key_values=cache, use_cache=True)),
        new_tokens)
    return dict(prefill=prompt_tokens / prefill_s, decode=(new_tokens - 1) / decode_s, tokens=tokens,
                logits=to_numpy(logits).astype(np.float32), peak_mib=memory_peak_mib(xp, start))


def hf_model(config, tensors, attn, torch_dtype, device):
    """transformers' LlamaForCausalLM holding our tensors (shared through DLPack on the GPU)."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(**{k: v for k, v in config.to_dict().items() if k not in ("torch_dtype",)})
    hf_config._attn_implementation = attn
    with torch.device("meta"):
        model = LlamaForCausalLM(hf_config)
    model = model.to_empty(device=device).to(torch_dtype).eval()
    # to_empty leaves non-persistent buffers uninitialised: rebuild the rotary frequencies on the device
    model.model.rotary_emb = type(model.model.rotary_emb)(hf_config).to(device)
    state = {}
    for name, arr in tensors.items():
        t = torch.from_dlpack(arr) if hasattr(arr, "__dlpack__") and device != "cpu" else torch.from_numpy(
            np.asarray(arr))
        state[name] = t.to(device=device, dtype=torch_dtype)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    if device != "cpu":
        torch.cuda.empty_cache()  # the blocks to_empty allocated before our weights replaced them
    return model


def bench_hf(config, tensors, attn, torch_dtype, device, prompt_tokens, new_tokens):
    import torch

    model = hf_model(config, tensors, attn, torch_dtype, device)
    ids = torch.from_numpy(prompt(config, prompt_tokens)).to(device)

    def synchronize():
        if device != "cpu":
            torch.cuda.synchronize()

    with torch.inference_mode():
        model(ids[:, :8])
        synchronize()
        if device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated() if device != "cpu" else None
        prefill_s, decode_s, tokens, logits = time_greedy(
            lambda: last_position(model(ids, use_cache=True, logits_to_keep=1)),
            lambda token, cache: last_position(model(torch.tensor([[token]], device=device), past_key_values=cache,
                                                     use_cache=True)),
            new_tokens)
    peak = None if start is None else (torch.cuda.max_memory_allocated() - start) / 2**20
    return dict(prefill=prompt_tokens / prefill_s, decode=(new_tokens - 1) / decode_s, tokens=tokens,
                logits=logits.float().cpu().numpy(), peak_mib=peak)


def parity_float32(config, xp, backend, device):
    """max |Δ| of the last position's logits, ours against transformers eager, both in float32 (short prompt)."""
    import numpy as np
    import torch

    import tinyllama_ref as tl
    from tinyllama_ref.backend import to_numpy
    from tinyllama_ref.formats.checkpoint import random_tensors

    tensors = random_tensors(config, seed=1, dtype=xp.float32, xp=xp)
    ids = prompt(config, PARITY_PROMPT)
    ours = to_numpy(tl.build_model(config, tensors, backend=backend)(ids, logits_to_keep=1).logits[0, -1])
    with torch.inference_mode():
        theirs = hf_model(config, tensors, "eager", torch.float32, device)(
            torch.from_numpy(ids).to(device), logits_to_keep=1).logits[0, -1].cpu().numpy()
    return float(np.abs(ours - theirs).max())


def copy_bandwidth(xp, mib=1024):
    """Device memory bandwidth (GB/s) from a large device-to-device copy (reads + writes)."""
    a = xp.ones(mib * 2**20 // 4, dtype=xp.float32)
    b = xp.empty_like(a)
    b[...] = a
    sync(xp)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        b[...] = a
        sync(xp)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9


def free_device(xp):
    if on_gpu(xp):
        import torch

        xp.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()


COLUMNS = ["shape", "impl", "prefill tok/s", "decode tok/s", "% of BW limit", "decode vs eager",
           "peak MiB beyond weights", "agreement"]


def render(rows, markdown: bool) -> str:
    cells = [COLUMNS] + [[str(r[c]) for c in COLUMNS] for r in rows]
    if markdown:
        cells = [[c.replace("|", "\\|") for c in row] for row in cells]  # "max|Δlogits|" inside a cell
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines[:1] + ["|" + "|".join(["---"] * 2 + ["---:"] * 5 + ["---"]) + "|"] + lines[1:])
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     + "  " + row[-1] for row in cells)


def targets(results, parity, dtype) -> list[str]:
    """Issue 14's targets, each with what was measured and whether it is met."""
    lines = []

    def check(ok, text):
        lines.append(f"{'PASS' if ok else 'FAIL'}  {text}")

    if "llama2-7b" in results:
        r = results["llama2-7b"]
        check(r["pct"] >= TARGET_BW_7B, f"llama2-7b decode at {r['pct']:.0f}% of the bandwidth limit "
                                        f"(target >= {TARGET_BW_7B}%)")
        check(r["vs_eager"] >= TARGET_VS_EAGER_7B, f"llama2-7b decode {r['vs_eager']:.2f}x eager transformers "
                                                   f"(target >= {TARGET_VS_EAGER_7B:.0f}x)")
    if "tinyllama-1.1b" in results:
        r = results["tinyllama-1.1b"]
        check(r["decode"] >= TARGET_TINYLLAMA_TOKS, f"tinyllama-1.1b decode {r['decode']:.0f} tok/s "
                                                    f"(target >= {TARGET_TINYLLAMA_TOKS})")
    for d, run, gaps in (("float32", f"a {PARITY_PROMPT}-token forward", parity),
                         (dtype, "the timed prefill", {s: r["gap"] for s, r in results.items()})):
        gaps = {s: g for s, g in gaps.items() if g is not None}
        if gaps:
            worst = max(gaps.values())
            check(worst <= TARGET_PARITY[d], f"max|Δlogits| against eager transformers, {d}, {run}: {worst:.2g} "
                                             f"(target <= {TARGET_PARITY[d]:g})")
    return lines


PEERS = {"torch": "pip install torch (the CUDA build on a GPU machine)", "transformers": "pip install -e '.[parity]'"}


def missing_requirement(cpu_smoke: bool) -> str | None:
    """What this script lacks, in one line (CuPy and a GPU, unless --cpu-smoke; torch; transformers), or None."""
    import importlib

    if not cpu_smoke:
        from tinyllama_ref.backend import get_module

        try:
            get_module("cupy")
        except RuntimeError as e:
            return f"{e} (python benchmarks/gpu.py --cpu-smoke tests the script on a CPU)"
    for module, install in PEERS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            return f"{module} is not installed, and the peers need it: {install}"
    import torch

    if not cpu_smoke and not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU (a CPU build?): install torch's CUDA build"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "tinyllama-1.1b", "smollm2-135m"])
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--no-parity", action="store_true", help="skip the float32 parity forward per shape")
    ap.add_argument("--out", type=Path, help="also write the table (Markdown) to this file")
    ap.add_argument("--cpu-smoke", action="store_true", help="run the tiny 'smoke' shape on NumPy/torch CPU")
    args = ap.parse_args()
    if missing := missing_requirement(args.cpu_smoke):
        sys.exit(f"benchmarks/gpu.py: {missing}")

    import numpy as np
    import torch

    import tinyllama_ref as tl
    from tinyllama_ref.backend import get_module
    from tinyllama_ref.formats.checkpoint import random_tensors

    if args.cpu_smoke:
        backend, device, shapes, dtype = "numpy", "cpu", ["smoke"], "float32"
        args.prompt_tokens, args.new_tokens = min(args.prompt_tokens, 64), min(args.new_tokens, 8)
    else:
        backend, device, shapes, dtype = "cupy", "cuda", args.shapes, args.dtype
    xp = get_module(backend)
    torch_dtype = getattr(torch, dtype)
    bw = copy_bandwidth(xp, 64 if args.cpu_smoke else 1024)
    name = "CPU" if args.cpu_smoke else xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    head = (f"device: {name}; copy bandwidth {bw:.0f} GB/s; dtype {dtype}; prompt {args.prompt_tokens}, "
            f"decode {args.new_tokens} tokens")
    print(head, flush=True)
    rows, summary, parity = [], {}, {}
    for shape in shapes:
        config = tl.LlamaConfig(**SHAPES[shape])
        tensors = random_tensors(config, dtype=getattr(xp, dtype), xp=xp)  # drawn on the device
        nbytes = sum(int(t.nbytes) for t in tensors.values())
        limit = bw * 1e9 / nbytes
        results = {"tinyllama_ref": bench_ours(config, tensors, backend, dtype, args.prompt_tokens,
                                               args.new_tokens)}
        for attn in ("eager", "sdpa"):
            results[f"transformers {attn}"] = bench_hf(config, tensors, attn, torch_dtype, device,
                                                       args.prompt_tokens, args.new_tokens)
        del tensors
        free_device(xp)
        parity[shape] = None if args.no_parity else parity_float32(config, xp, backend, device)
        free_device(xp)
        ours, eager = results["tinyllama_ref"], results["transformers eager"]["decode"]
        summary[shape] = dict(decode=ours["decode"], pct=100 * ours["decode"] / limit, vs_eager=ours["decode"] / eager,
                              gap=float(np.abs(results["transformers eager"]["logits"] - ours["logits"]).max()))
        for impl, r in results.items():
            if impl == "tinyllama_ref":
                agree = "float32 parity: see the peers" if parity[shape] is None else \
                    f"float32 max|Δlogits| vs transformers {parity[shape]:.2g}"
            else:
                agree = (f"max|Δlogits| {np.abs(r['logits'] - ours['logits']).max():.2g}, "
                         + ("same greedy tokens" if r["tokens"] == ours["tokens"] else "tokens differ"))
            rows.append({"shape": shape, "impl": impl, "prefill tok/s": f"{r['prefill']:.0f}",
                         "decode tok/s": f"{r['decode']:.1f}", "% of BW limit": f"{100 * r['decode'] / limit:.0f}%",
                         "decode vs eager": f"{r['decode'] / eager:.2f}x",
                         "peak MiB beyond weights": "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}",
                         "agreement": agree})
        print(f"{shape}: done", flush=True)
    from tinyllama_ref.fused import path as fused_path

    note = (f"BW limit = weight bytes / {bw:.0f} GB/s (device-to-device copy, read + write).\n"
            f"fused kernels: {fused_path()}")  # "plain (...)" when a cupy.fuse kernel failed on first use
    checks = targets(summary, parity, dtype)
    print(render(rows, markdown=False))
    print(note)
    print("\n".join(checks))
    if args.out:
        args.out.write_text("\n\n".join([head, render(rows, markdown=True), note, "\n".join(f"- {c}" for c in checks)])
                            + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
