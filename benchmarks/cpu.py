"""CPU speed, side by side: tinyllama_ref (NumPy) against HF transformers (torch eager), same machine, same run.

For each model: prefill tokens/s (one forward over the prompt), decode tokens/s (greedy, batch 1, one
token per step from the KV cache), and peak RSS while loading and while generating — each
implementation measured in its own subprocess so the peaks are its own. Also the machine's
memory-bandwidth limit for decode: the bytes of float32 weights read per token divided by the
bandwidth of one large float32 matrix-vector product; and, closer to home, the speed of a step that
does nothing but the model's own matrix-vector products (what BLAS reaches on these shapes).

    python benchmarks/cpu.py                       # bundled model, SmolLM2-135M (if fetched), TinyLlama-1.1B shape
    python benchmarks/cpu.py --models bundled --prompt-tokens 64 --new-tokens 32
    OPENBLAS_NUM_THREADS=2 python benchmarks/cpu.py --threads 2

Needs torch and transformers for the peer column (pip install -e ".[parity]").
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from timing import PREFILL_REPEATS, last_position, time_greedy  # benchmarks/timing.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
TINYLLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                    num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                    rms_norm_eps=1e-5, architectures=["LlamaForCausalLM"], model_type="llama")


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over from the parent across exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- workers (run in a subprocess each) --------------------------------------------------------

def best_of(run, repeats: int = PREFILL_REPEATS) -> float:
    """Best seconds of a few calls of run() (each ends by reading a result back)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        int(run())
        best = min(best, time.perf_counter() - t0)
    return best


def worker_ours(model_dir: str, prompt_tokens: int, new_tokens: int, long_tokens: int, packed: bool = True) -> dict:
    import numpy as np

    import tinyllama_ref as tl

    t0 = time.perf_counter()
    model = tl.load(model_dir, packed=packed)
    # touch every weight once so that loading cost (and its RSS) is counted here, not in the first step
    ids = (np.arange(prompt_tokens) * 7919 + 11) % model.config.vocab_size
    load_s = time.perf_counter() - t0
    load_rss = peak_rss_mib()
    model(ids[:4][None])  # warm-up: page the weights in
    prefill_s, decode_s, tokens, _ = time_greedy(
        lambda: last_position(model(ids[None], use_cache=True, logits_to_keep=1)),
        lambda token, cache: last_position(model([[token]], past_key_values=cache, use_cache=True)),
        new_tokens)
    n_long = min(long_tokens, model.config.max_position_embeddings)
    long_ids = (np.arange(n_long) * 7919 + 11) % model.config.vocab_size
    long_s = best_of(lambda: model(long_ids[None], logits_to_keep=1).logits[0, -1].argmax())
    return dict(load_s=load_s, load_peak_rss_mib=load_rss, prefill_tok_s=prompt_tokens / prefill_s,
                decode_tok_s=(new_tokens - 1) / decode_s, peak_rss_mib=peak_rss_mib(), tokens=tokens,
                params=model.num_parameters(), long_tokens=n_long, long_tok_s=n_long / long_s)


def worker_torch(model_dir: str, prompt_tokens: int, new_tokens: int, long_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    load_s = time.perf_counter() - t0
    load_rss = peak_rss_mib()
    vocab = model.config.vocab_size
    ids = (torch.arange(prompt_tokens) * 7919 + 11) % vocab
    with torch.inference_mode():
        model(ids[None, :4])
        prefill_s, decode_s, tokens, _ = time_greedy(
            lambda: last_position(model(ids[None], use_cache=True, logits_to_keep=1)),
            lambda token, cache: last_position(model(torch.tensor([[token]]), past_key_values=cache,
                                                     use_cache=True)),
            new_tokens)
        n_long = min(long_tokens, model.config.max_position_embeddings)
        long_ids = (torch.arange(n_long) * 7919 + 11) % vocab
        long_s = best_of(lambda: model(long_ids[None], logits_to_keep=1).logits[0, -1].argmax())
    return dict(load_s=load_s, load_peak_rss_mib=load_rss, prefill_tok_s=prompt_tokens / prefill_s,
                decode_tok_s=(new_tokens - 1) / decode_s, peak_rss_mib=peak_rss_mib(), tokens=tokens,
                long_tokens=n_long, long_tok_s=n_long / long_s)


def worker_bandwidth(mib: int = 512, repeats: int = 10) -> dict:
    """GB/s of one large float32 matrix-vector product (the shape of decode: weights read once per token)."""
    import numpy as np

    n = int((mib * 2**20 / 4) ** 0.5)
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    x = np.ones(n, np.float32)
    a @ x
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ x
        best = min(best, time.perf_counter() - t0)
    return dict(gb_s=a.nbytes / best / 1e9)


def worker_matvec_ceiling(model_dir: str, repeats: int = 5) -> dict:
    """Decode tokens/s if a step did nothing but this model's own matrix-vector products.

    Random float32 matrices of the model's shapes, a separate array per layer (so they stream from
    memory as in real decode): q, k, v, o, gate, up, down per layer, then the head. What NumPy's BLAS
    reaches on these shapes, with no Python, attention or norms around it.
    """
    import numpy as np

    matrices = [np.full(shape, 0.01, np.float32) for shape in matrices_read_per_token(Path(model_dir))]
    inputs = {m.shape[1]: np.ones((1, 1, m.shape[1]), np.float32) for m in matrices}
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for m in matrices:
            inputs[m.shape[1]] @ m.T
        best = min(best, time.perf_counter() - t0)
    return dict(tok_s=1.0 / best)


# -- the driver --------------------------------------------------------------------------------

def run_worker(kind: str, *args, threads: int) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import cpu; "
            f"import torch; torch.set_num_threads({threads})\n" if kind == "torch" else
            f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import cpu\n")
    code += f"print('RESULT' + json.dumps(cpu.worker_{kind}(*{list(args)!r})))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")


def make_random_checkpoint(shape: dict, out: Path) -> Path:
    """A random-weight float32 checkpoint of the given shape, written once and reused."""
    import tinyllama_ref as tl
    from tinyllama_ref.formats.checkpoint import random_tensors
    from tinyllama_ref.formats.safetensors import write_safetensors

    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = tl.LlamaConfig.from_dict(shape)
    tensors = random_tensors(config)
    write_safetensors(out / "model.safetensors", tensors, {"format": "pt"})
    (out / "config.json").write_text(json.dumps(config.to_dict()))
    return out


def matrices_read_per_token(model_dir: Path) -> list[tuple[int, int]]:
    """The shapes of the matrices one decode step reads whole, in order: every layer's, then the head.

    Not the embedding table, of which a step reads one row (unless the head is tied to it).
    """
    from tinyllama_ref.config import LlamaConfig
    from tinyllama_ref.formats.checkpoint import expected_shapes

    from tinyllama_ref.packing import GROUPS

    config = LlamaConfig.from_json(model_dir / "config.json")
    shapes, _ = expected_shapes(config)
    packed = {}  # q/k/v and gate/up as the one matrix each that the model packs them into at load (packing.py)
    for k, shape in shapes.items():
        if k.startswith("model.layers.") and len(shape) == 2:
            layer, block, name = k.split(".")[2:5]
            key = f"{layer}.{block}" if name in GROUPS.get(block, ()) else k
            packed[key] = (packed.get(key, (0,))[0] + shape[0], shape[1])
    return list(packed.values()) + [shapes["lm_head.weight"]]


def bytes_read_per_token(model_dir: Path) -> int:
    """float32 bytes one decode step reads: the matrices above (norm weights are a rounding error)."""
    return sum(4 * rows * cols for rows, cols in matrices_read_per_token(model_dir))


def weight_bytes(model_dir: Path) -> int:
    """All float32 weight bytes (what loading holds), the tied head counted once."""
    from tinyllama_ref.config import LlamaConfig
    from tinyllama_ref.formats.checkpoint import expected_shapes

    import numpy as np

    shapes, optional = expected_shapes(LlamaConfig.from_json(model_dir / "config.json"))
    return 4 * sum(int(np.prod(s)) for k, s in shapes.items() if k not in optional)


def bench_cache() -> Path:
    """Where the benchmarks keep the random checkpoints they make: <cache>/bench ($TINYLLAMA_CACHE moves it)."""
    from tinyllama_ref.fetch import cache_root

    return cache_root() / "bench"


def find_models(names: list[str], cache: Path) -> list[tuple[str, Path]]:
    from tinyllama_ref.cli import default_model_dir
    from tinyllama_ref.fetch import is_complete, model_dir

    found = []
    for name in names:
        if name == "bundled":
            found.append(("bundled", default_model_dir()))
        elif name == "smollm2":
            if not is_complete(model_dir("smollm2")):  # a benchmark does not download 540 MB unasked
                print("smollm2: not fetched (run `tinyllama-ref fetch smollm2`), skipped", file=sys.stderr)
            else:
                found.append(("smollm2-135m", model_dir("smollm2")))
        elif name == "tinyllama-1.1b":
            found.append(("tinyllama-1.1b-shape", make_random_checkpoint(TINYLLAMA_1B, cache / "tinyllama-1.1b")))
        else:
            found.append((Path(name).name, Path(name)))
    return found


PEER_INSTALL = "pip install torch==2.13.0 && pip install -e '.[parity]'"


def missing_peer() -> str | None:
    """The first of torch, transformers that cannot be imported, else None (nothing is imported here)."""
    for module in ("torch", "transformers"):
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def print_training_step(threads: int, no_torch: bool) -> None:
    """benchmarks/training.py's step on the bundled model (batch 8 x 256, clip, AdamW): ours with the batch shared
    by `threads` threads, and torch eager with as many threads."""
    import training  # benchmarks/training.py, beside this script

    args = argparse.Namespace(batch_size=8, seq_len=256, repeats=3, threads=threads)
    steps = {"ours": training.run_worker("ours-threads" if threads > 1 else "ours", args)}
    if not no_torch:
        steps["torch"] = training.run_worker("torch", args)
    print("\ntraining step, bundled model, batch 8 x 256 tokens (forward, backward, clipping, AdamW), best of 3:")
    for impl, r in steps.items():
        print(f"{'':22s} {impl:13s} {r['seconds']:8.3f} s/step {8 * 256 / r['seconds']:9.0f} tok/s")
    if len(steps) == 2:
        print(f"{'':22s} {'ratio':13s} {steps['torch']['seconds'] / steps['ours']['seconds']:8.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["bundled", "smollm2", "tinyllama-1.1b"])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--long-prompt", type=int, default=512, help="a longer prefill (up to the model's context)")
    ap.add_argument("--no-packing", action="store_true", help="load with packed=False: one product per weight "
                    "(with TINYLLAMA_KEEP_FREED_MEMORY=0, the two load-time speed-ups can be measured alone)")
    ap.add_argument("--no-training", action="store_true", help="skip the training step (benchmarks/training.py)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--cache", type=Path, default=bench_cache())
    ap.add_argument("--no-torch", action="store_true", help="skip the transformers column")
    ap.add_argument("--bandwidth-mib", type=int, default=512, help="size of the bandwidth probe's matrix")
    args = ap.parse_args()
    if not args.no_torch and (missing := missing_peer()):
        print(f"{missing} is not installed: only the tinyllama_ref column is measured. For the transformers "
              f"column: {PEER_INSTALL}", file=sys.stderr)
        args.no_torch = True

    bw = run_worker("bandwidth", args.bandwidth_mib, threads=args.threads)["gb_s"]
    print(f"machine: {os.cpu_count()} cores, {args.threads} threads; float32 matvec bandwidth {bw:.1f} GB/s")
    rows = []
    for label, path in find_models(args.models, args.cache):
        work = (str(path), args.prompt_tokens, args.new_tokens, args.long_prompt)
        ours = run_worker("ours", *work, not args.no_packing, threads=args.threads)
        peer = None if args.no_torch else run_worker("torch", *work, threads=args.threads)
        ceiling = run_worker("matvec_ceiling", str(path), threads=args.threads)["tok_s"]
        limit = bw * 1e9 / bytes_read_per_token(path)
        rows.append((label, path, ours, peer, limit, ceiling))
        same = peer is not None and ours["tokens"] == peer["tokens"]
        print(f"{label}: greedy tokens identical to transformers: {same}" if peer else f"{label}: done")

    wb = lambda p: weight_bytes(p) / 2**20  # noqa: E731
    print()
    print(f"{'model':22s} {'impl':13s} {'prefill tok/s':>13s} {'decode tok/s':>12s} {'vs torch':>9s} "
          f"{'% of BW limit':>13s} {'% of matvecs':>12s} {'load peak MiB':>13s} {'peak MiB':>9s} {'w32 MiB':>8s}")
    for label, path, ours, peer, limit, ceiling in rows:
        for impl, r in (("tinyllama_ref", ours), ("torch eager", peer)):
            if r is None:
                continue
            ratio = f"{ours['decode_tok_s'] / peer['decode_tok_s']:.2f}x" if (peer and impl == "tinyllama_ref") else ""
            print(f"{label:22s} {impl:13s} {r['prefill_tok_s']:13.1f} {r['decode_tok_s']:12.1f} {ratio:>9s} "
                  f"{100 * r['decode_tok_s'] / limit:12.0f}% {100 * r['decode_tok_s'] / ceiling:11.0f}% "
                  f"{r['load_peak_rss_mib']:13.0f} {r['peak_rss_mib']:9.0f} {wb(path):8.0f}")
        if peer:
            print(f"{'':22s} {'ratio':13s} {ours['prefill_tok_s'] / peer['prefill_tok_s']:12.2f}x "
                  f"{ours['decode_tok_s'] / peer['decode_tok_s']:11.2f}x")
        print(f"{'':22s} {'BW limit':13s} {'':13s} {limit:12.1f}   matvecs alone: {ceiling:.1f} tok/s")
    print(f"\n{'model':22s} {'impl':13s} {'long prefill':>14s} {'tok/s':>9s} {'ratio':>7s}")
    for label, path, ours, peer, limit, ceiling in rows:
        ratio = f"{ours['long_tok_s'] / peer['long_tok_s']:.2f}x" if peer else ""
        print(f"{label:22s} {'ours':13s} {ours['long_tokens']:8d} tokens {ours['long_tok_s']:9.1f} {ratio:>7s}")
        if peer:
            print(f"{label:22s} {'torch':13s} {peer['long_tokens']:8d} tokens {peer['long_tok_s']:9.1f}")
    if not args.no_training:
        print_training_step(args.threads, args.no_torch)
    print(f"\nBW limit = float32 bytes read per token / {bw:.1f} GB/s. % of matvecs = against a step that runs "
          f"only the model's matrix-vector products. Decode = greedy, batch 1, {args.new_tokens} tokens after a "
          f"{args.prompt_tokens}-token prompt; prefill = best of {PREFILL_REPEATS}.")

if __name__ == "__main__":
    main()
