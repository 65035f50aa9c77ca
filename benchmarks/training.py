"""A training step, side by side: tinyllama_ref's NumPy backward passes against PyTorch autograd on HF transformers.

One step = loss and gradients of a [batch, seq_len] window, clipping to norm 1, one AdamW update: what
`tinyllama-ref train` and tools/train_bundled_model.py do 1,600 times. Each implementation runs in its own
subprocess (so its peak memory is its own) on the bundled model's config, from the same weights and batch.
Prints seconds per step (best of --repeats), tokens/s, the ratio, and the step's peak memory above the
loaded model (RSS high-water mark; ours also with per-layer recomputation, `checkpoint=True`, and, with
--threads above 1, with the batch shared by that many threads of one BLAS thread each).

    OMP_NUM_THREADS=2 python benchmarks/training.py                # batch 8 x 256 tokens, 2 threads
    python benchmarks/training.py --threads 1 --batch-size 2 --seq-len 64 --repeats 2

Needs torch and transformers for the peer column (pip install -e ".[parity]"); without them, ours alone.
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

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "tinyllama_ref" / "assets" / "kjv-llama"


def rss_now_and_peak_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line[:5]] = int(line.split()[1]) / 1024
    return found.get("VmRSS", float("nan")), found.get("VmHWM", float("nan"))


def batch(vocab: int, b: int, s: int):
    import numpy as np

    return np.random.default_rng(0).integers(3, vocab, (b, s + 1))  # s predictions per row


def worker_ours(b: int, s: int, repeats: int, checkpoint: bool, workers: int = 1) -> dict:
    import tinyllama_ref as tl
    from tinyllama_ref.optim import AdamW
    from tinyllama_ref.backend import keep_freed_memory
    from tinyllama_ref.train import decays, gradients, train_step

    keep_freed_memory()
    model = tl.load(BUNDLED)
    optimizer = AdamW(model.params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                      no_decay=lambda name, arr: not decays(name, arr))
    rows = batch(model.config.vocab_size, b, s)
    rss_loaded, _ = rss_now_and_peak_mib()
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        loss, _ = train_step(gradients(model, checkpoint, workers), optimizer, rows, rows, 1e-4, 1.0)
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "loss0": loss, "peak_mib": rss_now_and_peak_mib()[1] - rss_loaded}


def worker_torch(b: int, s: int, repeats: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(BUNDLED, dtype=torch.float32)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95))
    rows = torch.from_numpy(batch(model.config.vocab_size, b, s))
    rss_loaded, _ = rss_now_and_peak_mib()
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = model(input_ids=rows, labels=rows).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "loss0": loss.item(), "peak_mib": rss_now_and_peak_mib()[1] - rss_loaded}


def run_worker(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--batch-size", str(args.batch_size), "--seq-len",
           str(args.seq_len), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--worker", choices=["ours", "ours-checkpoint", "ours-threads", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    b, s = args.batch_size, args.seq_len
    if args.worker:
        result = (worker_torch(b, s, args.repeats, args.threads) if args.worker == "torch" else
                  worker_ours(b, s, args.repeats, args.worker == "ours-checkpoint",
                              args.threads if args.worker == "ours-threads" else 1))
        print(json.dumps(result))
        return
    has_torch = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    rows = {"ours": run_worker("ours", args), "ours-checkpoint": run_worker("ours-checkpoint", args)}
    if args.threads > 1:  # the batch shared by `threads` threads, one BLAS thread each (train.value_and_grad_threads)
        rows["ours-threads"] = run_worker("ours-threads", args)
    if has_torch:
        rows["torch"] = run_worker("torch", args)
    tokens = b * s
    print(f"training step on the bundled model: batch {b} x {s} tokens, {args.threads} threads, best of "
          f"{args.repeats}")
    print(f"{'impl':16s} {'s/step':>8s} {'tokens/s':>9s} {'peak MiB':>9s} {'first loss':>10s}")
    for name, r in rows.items():
        print(f"{name:16s} {r['seconds']:8.3f} {tokens / r['seconds']:9.0f} {r['peak_mib']:9.0f} {r['loss0']:10.4f}")
    if has_torch:
        best = min((r["seconds"], name) for name, r in rows.items() if name.startswith("ours") and "checkpoint" not in name)
        print(f"ratio (torch s/step / ours s/step): {rows['torch']['seconds'] / best[0]:.2f}x ({best[1]})")
    else:
        print("torch/transformers not installed: no peer column (pip install -e '.[parity]')")


if __name__ == "__main__":
    main()
