"""Step through the KV cache: prefill a prompt once, then decode one token at a time from the cache.

    python examples/kv_cache.py
    python examples/kv_cache.py --steps 30 --prompt "And God said"

Without a cache, every new token would recompute the keys and values of the whole sequence. The
cache keeps them: each step runs the model on one new token, writes its key/value into the next
free slot, and attends over all filled slots. This script checks, at every step, that the cached
logits equal a full recomputation, and shows the cache filling up and doubling its capacity.
Writes OUT/kv_cache.txt and OUT/kv_cache.png (the picture needs matplotlib).
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import tinyllama_ref as tl
from tinyllama_ref.cli import default_model_dir


def step_through(model, tokenizer, prompt: str, steps: int):
    """Greedy decoding with the cache; a report line per step, and the cache at the end."""
    ids = tokenizer.encode(prompt)
    out = model([ids], use_cache=True)  # prefill: all prompt tokens in one pass
    cache = out.past_key_values
    c = model.config
    lines = [f"prompt: {len(ids)} tokens; cache per layer: keys and values of shape "
             f"[batch, kv_heads={c.num_key_value_heads}, capacity, head_dim={c.head_dim}] x {c.num_hidden_layers} layers",
             f"{'step':>4}  {'token':>14}  {'new':>3}  {'length':>6}  {'capacity':>8}  max|Δlogits| vs no cache"]
    lines.append(f"{'fill':>4}  {'(prompt)':>14}  {len(ids):>3}  {cache.length:>6}  {cache.capacity:>8}  -")
    worst = 0.0
    for step in range(1, steps + 1):
        token = int(out.logits[0, -1].argmax())
        ids.append(token)
        out = model([[token]], past_key_values=cache, use_cache=True)  # one new token, the past from the cache
        full = model([ids])  # the same position computed from scratch, for the check
        diff = float(np.abs(tl.backend.to_numpy(out.logits[0, -1]) - tl.backend.to_numpy(full.logits[0, -1])).max())
        worst = max(worst, diff)
        lines.append(f"{step:>4}  {tokenizer.id_to_piece(token)!r:>14}  {1:>3}  {cache.length:>6}  "
                     f"{cache.capacity:>8}  {diff:.2e}")
    lines.append(f"worst difference between cached and full logits: {worst:.2e}")
    return lines, cache, len(ids) - steps, worst


def plot_cache(cache, prompt_len: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = tl.backend.to_numpy(cache.keys[0][0, 0])  # layer 0, batch row 0, kv head 0: [capacity, head_dim]
    shown = np.where(np.arange(cache.capacity)[:, None] < cache.length, keys, np.nan)  # unfilled slots blank
    fig, ax = plt.subplots(figsize=(8, 5))
    im = ax.imshow(shown.T, aspect="auto", cmap="coolwarm", interpolation="nearest")
    ax.axvline(prompt_len - 0.5, color="k", lw=1.2)
    ax.axvline(cache.length - 0.5, color="k", lw=1.2, ls="--")
    top = ax.get_xaxis_transform()  # x in data units, y in axes units: labels just above the plot
    ax.text(prompt_len / 2, 1.01, "prefill", ha="center", va="bottom", transform=top)
    ax.text((prompt_len + cache.length) / 2, 1.01, "decoded", ha="center", va="bottom", transform=top)
    ax.text((cache.length + cache.capacity) / 2, 1.01, "free", ha="center", va="bottom", color="grey", transform=top)
    ax.set(xlabel="cache slot (= position)", ylabel="key feature (head_dim)")
    ax.set_title(f"Layer 0, kv head 0 keys: {cache.length} of {cache.capacity} slots filled", pad=22)
    fig.colorbar(im, ax=ax, label="key value (after RoPE)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint directory or .gguf file (default: the bundled model)")
    ap.add_argument("--prompt", default="In the beginning God created")
    ap.add_argument("--steps", type=int, default=12, help="tokens to decode")
    ap.add_argument("--out", type=Path, help="output directory (default: a new temporary directory)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tinyllama_kv_cache_"))
    out.mkdir(parents=True, exist_ok=True)

    model_dir = Path(args.model) if args.model else default_model_dir()
    model, tokenizer = tl.load(model_dir), tl.load_tokenizer(model_dir)
    lines, cache, prompt_len, worst = step_through(model, tokenizer, args.prompt, args.steps)
    report = "\n".join(lines) + "\n"
    print(report, end="")
    path = out / "kv_cache.txt"
    path.write_text(report, encoding="utf-8")
    print(f"wrote {path}")
    try:
        print(f"wrote {plot_cache(cache, prompt_len, out / 'kv_cache.png')}")
    except ImportError:
        print("matplotlib is not installed: no picture (pip install matplotlib)")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
