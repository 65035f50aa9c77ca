"""Run a parity check: dump every intermediate of a forward pass, compare two dumps, find a planted bug.

    python examples/parity_check.py
    python examples/parity_check.py --prompt "And God said, Let there be light"

This is what you do when checking your own implementation against this one (see the parity kit
guide): both sides write the same named tensors, and `compare` names the first that disagrees.
Here the two sides are this package in float32 and in float64 (they agree), and then a copy of
it with a classic bug planted: RoPE applied to interleaved pairs (x[2i], x[2i+1]), Meta's layout,
on weights in Hugging Face's half-split layout. The comparison pins the bug to `q_rope` of layer 0.
Writes the dumps and OUT/parity_report.txt.
"""
import argparse
import dataclasses
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

import tinyllama_ref as tl
from tinyllama_ref.cli import default_model_dir
from tinyllama_ref.parity import compare, compare_files, first_divergence, save_tensors, trace_forward


def apply_rope_interleaved(x, cos, sin):
    """The bug: rotate pairs (x[2i], x[2i+1]) although the weights pair x[i] with x[i + d/2]."""
    half = x.shape[-1] // 2
    c, s = cos[:, None, :, :half], sin[:, None, :, :half]  # cos/sin repeat their first half
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint directory or .gguf file (default: the bundled model)")
    ap.add_argument("--prompt", default="In the beginning God created the heaven and the earth.")
    ap.add_argument("--out", type=Path, help="output directory (default: a new temporary directory)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tinyllama_parity_"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model) if args.model else default_model_dir()
    tokenizer = tl.load_tokenizer(model_dir)
    ids = [tokenizer.encode(args.prompt)]  # more than one token: position 0 is not rotated at all

    # 1. The reference dump: every intermediate under its stable name (see tinyllama_ref/parity.py).
    ours = trace_forward(tl.load(model_dir, dtype="float32"), ids)
    save_tensors(out / "ours.safetensors", ours)
    # 2. "Their" dump: the same model computed in float64. It agrees within the default tolerances.
    theirs = trace_forward(tl.load(model_dir, dtype="float64"), ids)
    save_tensors(out / "float64.safetensors", theirs)
    # 3. A buggy implementation: the same code with RoPE on the wrong pairs.
    buggy = tl.load(model_dir, dtype="float32")
    buggy.ops = dataclasses.replace(buggy.ops, apply_rope=apply_rope_interleaved)  # handed to the one layer
    broken = trace_forward(buggy, ids)
    save_tensors(out / "broken.safetensors", broken)

    report = io.StringIO()
    print(f"== float32 vs float64 ({len(ours)} tensors)", file=report)
    code_ok = compare_files(out / "ours.safetensors", out / "float64.safetensors", out=report)
    print("\n== float32 vs interleaved-RoPE bug", file=report)
    code_bad = compare_files(out / "ours.safetensors", out / "broken.safetensors", out=report)
    text = report.getvalue()
    print(text)
    path = out / "parity_report.txt"
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")

    bad = first_divergence(compare(ours, broken))
    found = bad is not None and bad["name"] == "layers.0.self_attn.q_rope"
    print(f"float64 agrees: {code_ok == 0}; the bug is pinned to {bad['name'] if bad else None}: {found}")
    return 0 if code_ok == 0 and code_bad == 1 and found else 1


if __name__ == "__main__":
    sys.exit(main())
