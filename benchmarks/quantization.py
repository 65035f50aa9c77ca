"""Weight-only quantization, measured: memory, decode speed and accuracy of int8 and int4 against float32.

For each model, the same checkpoint loaded three ways (`tl.load(..., quantize=None | "int8" | "int4")`):
- weight memory: `Model.get_memory_footprint()` (the embedding, norms and head stay float32);
- decode tokens/s: greedy, batch 1, one token per step from the KV cache, and its ratio to float32 in this run;
- max |Δlogits| against float32 over every position of a fixed prompt;
- perplexity of a fixed public-domain text (Psalm 23, King James Version): exp of the mean next-token
  negative log-likelihood over the whole text in one window (`perplexity_of_ids` with max_length = its length).

    python benchmarks/quantization.py                    # the bundled model, and SmolLM2-135M if fetched
    python benchmarks/quantization.py --models bundled --new-tokens 8

On a CPU, int8/int4 decode is expected to be *slower* than float32: NumPy has no integer-weight matmul, so
every step dequantizes each weight back to float32 before using it (the work of a whole model's worth of
elementwise operations per token, on top of the same float matmuls). What quantization buys here is memory.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from cpu import bench_cache, find_models  # benchmarks/cpu.py: the bundled model, smollm2 if fetched, or a path
from timing import last_position, time_greedy  # benchmarks/timing.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tinyllama_ref as tl  # noqa: E402
from tinyllama_ref.perplexity import perplexity_of_ids  # noqa: E402

PSALM_23 = ("The LORD is my shepherd; I shall not want. He maketh me to lie down in green pastures: he leadeth me "
            "beside the still waters. He restoreth my soul: he leadeth me in the paths of righteousness for his "
            "name's sake. Yea, though I walk through the valley of the shadow of death, I will fear no evil: for "
            "thou art with me; thy rod and thy staff they comfort me. Thou preparest a table before me in the "
            "presence of mine enemies: thou anointest my head with oil; my cup runneth over. Surely goodness and "
            "mercy shall follow me all the days of my life: and I will dwell in the house of the LORD for ever.")
PROMPT = "In the beginning God created"


def decode(model, prompt, new_tokens: int) -> tuple[float, list[int]]:
    """(decode tokens/s, the greedy tokens) after prefilling the prompt."""
    _, decode_s, tokens, _ = time_greedy(
        lambda: last_position(model(prompt, use_cache=True, logits_to_keep=1)),
        lambda token, cache: last_position(model([[token]], past_key_values=cache, use_cache=True)),
        new_tokens, repeats=1)
    return (new_tokens - 1) / decode_s, tokens


def measure_model(path: Path, schemes: list, new_tokens: int, rounds: int) -> dict:
    """Every scheme's figures. Decode is timed `rounds` times, the schemes taking turns, and the best
    run of each kept: on a shared machine, the others' load then falls on all of them alike."""
    tokenizer = tl.load_tokenizer(path)
    prompt, text = np.array([tokenizer.encode(PROMPT)]), np.array([tokenizer.encode(PSALM_23)])
    models = {(s, g): tl.load(path, quantize=s, group_size=g) for s, g in schemes}
    results = {}
    for key, model in models.items():
        model(prompt[:, :2])  # warm-up: page the weights in
        results[key] = dict(bytes=model.get_memory_footprint(), logits=np.asarray(model(prompt).logits),
                            ppl=perplexity_of_ids(model, text, max_length=text.shape[1]),  # one window
                            text_tokens=text.shape[1], decode_tok_s=0.0)
    for _ in range(rounds):
        for key, model in models.items():
            tok_s, results[key]["tokens"] = decode(model, prompt, new_tokens)
            results[key]["decode_tok_s"] = max(results[key]["decode_tok_s"], tok_s)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["bundled", "smollm2"])
    ap.add_argument("--group-sizes", nargs="+", default=["auto", "32"],
                    help="int4 group sizes: numbers, or auto (per weight, the largest of 128, 64, 32 dividing its "
                         "input: tl.load's default); default: auto 32")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="decode timings per scheme, the best kept")
    args = ap.parse_args()
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "all"
    print(f"machine: {os.cpu_count()} cores, BLAS threads: {threads}; int4 group sizes {args.group_sizes}; "
          f"decode: {args.new_tokens} greedy tokens, best of {args.rounds}")
    rows = []
    for label, path in find_models(args.models, bench_cache()):
        schemes = [(None, 0), ("int8", 0)] + [("int4", None if g == "auto" else int(g)) for g in args.group_sizes]
        results = measure_model(path, schemes, args.new_tokens, args.rounds)
        rows.append((label, results))
        print(f"{label}: done", file=sys.stderr)

    print()
    print(f"{'model':14s} {'weights':9s} {'MiB':>8s} {'vs f32':>7s} {'decode tok/s':>12s} {'vs f32':>7s} "
          f"{'max|Δlogits|':>12s} {'perplexity':>10s} {'Δppl':>7s} {'same greedy':>11s}")
    notes = []
    for label, results in rows:
        base = results[(None, 0)]
        for (scheme, group), r in results.items():
            name = (f"int4 g{group}" if group else "int4 auto") if scheme == "int4" else scheme or "float32"
            delta = float(np.abs(r["logits"] - base["logits"]).max())
            same = sum(a == b for a, b in zip(r["tokens"], base["tokens"]))
            print(f"{label:14s} {name:9s} {r['bytes'] / 2**20:8.1f} {r['bytes'] / base['bytes']:6.2f}x "
                  f"{r['decode_tok_s']:12.1f} {r['decode_tok_s'] / base['decode_tok_s']:6.2f}x {delta:12.2e} "
                  f"{r['ppl']:10.3f} {r['ppl'] - base['ppl']:+7.3f} {same:>5d}/{len(base['tokens']):<5d}")
            if scheme == "int4" and delta == 0:
                notes.append(f"{label} {name}: max|Δlogits| is exactly 0 because the weights already lie on this "
                             f"grid: a Q4_1 GGUF stores blocks of 32 weights on 16 levels from their minimum to "
                             f"their maximum, which is what int4 with groups of 32 computes, so it gives them back")
    print("\n".join(notes))
    counts = ", ".join(f"{label} {results[(None, 0)]['text_tokens']}" for label, results in rows)
    print(f"\nperplexity text: Psalm 23 (KJV), tokens: {counts}; max|Δlogits| over the prompt {PROMPT!r}.")


if __name__ == "__main__":
    main()
