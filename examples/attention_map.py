"""Show where one attention head looks: the [query x key] probability map of a layer and head.

    python examples/attention_map.py                              # layer 0, head 0 of the bundled model
    python examples/attention_map.py --layer 3 --head 5 --prompt "And the LORD spake unto Moses"

Row i is query token i; column j is how much of its attention goes to key token j. Everything
above the diagonal is zero: the causal mask hides the future. Writes OUT/attention_map.png
(needs matplotlib).
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import tinyllama_ref as tl
from tinyllama_ref.cli import default_model_dir


def attention_probs(model, tokenizer, prompt: str, layer: int, head: int):
    """The tokens of `prompt` and one head's attention probabilities [query, key] (NumPy)."""
    c = model.config
    if not 0 <= layer < c.num_hidden_layers:
        raise SystemExit(f"--layer {layer} is out of range: this model has {c.num_hidden_layers} layers")
    if not 0 <= head < c.num_attention_heads:
        raise SystemExit(f"--head {head} is out of range: this model has {c.num_attention_heads} heads")
    ids = tokenizer.encode(prompt)
    out = model([ids], output_attentions=True)  # out.attentions[layer]: [batch, heads, query, key]
    probs = tl.backend.to_numpy(out.attentions[layer][0, head])
    return [tokenizer.id_to_piece(i) for i in ids], probs


def plot_attention(pieces, probs, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(pieces)
    size = min(3 + 0.32 * n, 12)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(probs, cmap="viridis", vmin=0, vmax=max(float(probs.max()), 1e-6))
    ax.set_xticks(range(n), pieces, rotation=90, fontsize=8)
    ax.set_yticks(range(n), pieces, fontsize=8)
    ax.set(xlabel="key (attended to)", ylabel="query (attending)", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention probability")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint directory or .gguf file (default: the bundled model)")
    ap.add_argument("--prompt", default="In the beginning God created the heaven and the earth.")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--head", type=int, default=0)
    ap.add_argument("--out", type=Path, help="output directory (default: a new temporary directory)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tinyllama_attention_"))
    out.mkdir(parents=True, exist_ok=True)

    model_dir = Path(args.model) if args.model else default_model_dir()
    model, tokenizer = tl.load(model_dir), tl.load_tokenizer(model_dir)
    pieces, probs = attention_probs(model, tokenizer, args.prompt, args.layer, args.head)
    assert np.allclose(probs.sum(-1), 1, atol=1e-5) and np.all(np.triu(probs, 1) == 0)  # rows sum to 1; causal
    c = model.config
    kv_head = args.head // c.n_rep  # grouped-query attention: this query head's key/value head
    for piece, row in zip(pieces, probs):
        top = int(row.argmax())
        print(f"{piece!r:>14} looks most at {pieces[top]!r} ({row[top]:.2f})")
    title = (f"layer {args.layer}, head {args.head} (shares k/v head {kv_head} with "
             f"{c.n_rep - 1} other{'s' if c.n_rep != 2 else ''})" if c.n_rep > 1 else
             f"layer {args.layer}, head {args.head}")
    path = plot_attention(pieces, probs, title, out / "attention_map.png")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
