"""Figures for the docs, drawn with matplotlib from the package's own functions at build time.

Each function writes one PNG and returns its path. `docs/gen_pages.py` calls them while the site is
built, so a figure always shows what the current code computes:

    causal_padding_mask(path)   attention_mask_bias for a left-padded batch, and one decoding step
    gqa_head_sharing(path)      which key/value head each query head reads (from repeat_kv)
    rope_rotation(path)         q·k after RoPE depends only on the offset between positions
    training_curves(path)       the bundled model trained twice, PyTorch and NumPy, from the run's own log

The RoPE-variants and attention-map figures are the examples' own (examples/rope_variants.py,
examples/attention_map.py), so the docs show exactly what the examples draw.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Lay out, write as PNG (110 dpi) and close a figure; its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def load_example(name: str):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def causal_padding_mask(path: Path) -> Path:
    """Three masks from `attention_mask_bias`: plain causal, a left-padded row, and one cached decoding step."""
    from tinyllama_ref.llama import attention_mask_bias

    plt = _plt()
    padded = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # row 1: two pad tokens on the left
    prefill = attention_mask_bias(padded, 6, 6, 0)  # [2, 1, 6, 6]
    step = attention_mask_bias(np.concatenate([padded, [[1], [1]]], axis=1), 1, 7, 6)  # 1 new token, 6 cached
    panels = [(prefill[0, 0], "causal (prefill, no padding)", 0),
              (prefill[1, 0], "causal + left padding", 2),
              (step[1, 0], "decoding step 7 (row with padding)", 2)]
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.9), gridspec_kw={"width_ratios": [6, 6, 7]})
    for ax, (bias, title, pads) in zip(axes, panels):
        visible = (bias == 0).astype(float)
        ax.imshow(visible, cmap="Blues", vmin=-0.15, vmax=1.1, aspect="equal")
        s, t = visible.shape
        for i in range(s):
            for j in range(t):
                ax.text(j, i, "0" if visible[i, j] else "−∞", ha="center", va="center", fontsize=8,
                        color="white" if visible[i, j] else "grey")
        ax.set_xticks(range(t), [("pad" if j < pads else str(j)) for j in range(t)], fontsize=8)
        first_query = t - s
        ax.set_yticks(range(s), [str(first_query + i) for i in range(s)], fontsize=8)
        ax.set(title=title, xlabel="key position j", ylabel="query position i")
    fig.suptitle("The additive mask M in softmax(qkᵀ/√d + M): 0 where query i may look at key j, −∞ elsewhere",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def gqa_head_sharing(path: Path, n_heads: int = 8, n_kv_heads: int = 2) -> Path:
    """Query heads and the key/value head each one reads, as `repeat_kv` assigns them."""
    from tinyllama_ref.llama import repeat_kv

    plt = _plt()
    n_rep = n_heads // n_kv_heads
    kv_index = np.arange(n_kv_heads, dtype=np.float32).reshape(1, n_kv_heads, 1, 1)  # head g holds the value g
    reads = repeat_kv(kv_index, n_rep)[0, :, 0, 0].astype(int)  # [n_heads]: the kv head behind each query head
    colors = [f"C{g}" for g in range(n_kv_heads)]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for h in range(n_heads):
        ax.add_patch(plt.Rectangle((h - 0.4, 1.6), 0.8, 0.6, color=colors[reads[h]], alpha=0.35))
        ax.text(h, 1.9, f"q{h}", ha="center", va="center", fontsize=10)
    for g in range(n_kv_heads):
        centre = (g + 0.5) * n_rep - 0.5
        ax.add_patch(plt.Rectangle((centre - 1.2, -0.2), 2.4, 0.6, color=colors[g], alpha=0.6))
        ax.text(centre, 0.1, f"k{g}, v{g}", ha="center", va="center", fontsize=10)
        for h in np.flatnonzero(reads == g):
            ax.annotate("", xy=(h, 1.6), xytext=(centre, 0.4),
                        arrowprops=dict(arrowstyle="-", color=colors[g], lw=1.4))
    ax.set_xlim(-0.8, n_heads - 0.2)
    ax.set_ylim(-0.5, 2.5)
    ax.axis("off")
    ax.set_title(f"Grouped-query attention: {n_heads} query heads, {n_kv_heads} key/value heads "
                 f"(query head h reads kv head h // {n_rep})", fontsize=10)
    return _save(fig, path)


def rope_rotation(path: Path, head_dim: int = 64) -> Path:
    """RoPE makes q·k depend on the offset only: scores of fixed q, k placed at many position pairs."""
    from tinyllama_ref.config import LlamaConfig
    from tinyllama_ref.llama import apply_rope, rope_cos_sin
    from tinyllama_ref.rope_scaling import rope_inv_freq

    plt = _plt()
    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4)
    inv_freq, _ = rope_inv_freq(config)
    rng = np.random.default_rng(0)
    q = rng.standard_normal(head_dim).astype(np.float32)
    k = q + 0.3 * rng.standard_normal(head_dim).astype(np.float32)  # a key that matches the query well
    positions = np.arange(64)
    cos, sin = rope_cos_sin(inv_freq, positions[None])  # [1, 64, d]
    qs = apply_rope(np.broadcast_to(q, (1, 1, 64, head_dim)), cos, sin)[0, 0]  # q at every position
    ks = apply_rope(np.broadcast_to(k, (1, 1, 64, head_dim)), cos, sin)[0, 0]
    scores = qs @ ks.T  # [query position m, key position n]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    im = ax1.imshow(scores, cmap="magma")
    ax1.set(xlabel="key position n", ylabel="query position m", title="q·k after RoPE: constant along diagonals")
    fig.colorbar(im, ax=ax1, fraction=0.046)
    for m in (0, 20, 40):
        ax2.plot(positions - m, scores[m], label=f"query at m = {m}", lw=1.5)
    ax2.set(xlabel="offset n − m", ylabel="score", title="the same curve from every query position")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    return _save(fig, path)


SIDE_BY_SIDE = REPO / "docs" / "data" / "kjv_training_side_by_side.json"  # tools/train_bundled_model.py --side-by-side


def training_curves(path: Path, log_path: Path = SIDE_BY_SIDE) -> Path:
    """Training loss (mean of 25 steps) and validation loss of the same run in PyTorch and in NumPy."""
    import json

    plt = _plt()
    record = json.loads(log_path.read_text(encoding="utf-8"))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for engine, colour, label in (("torch", "tab:orange", "PyTorch (transformers)"), ("numpy", "tab:blue", "NumPy (tinyllama_ref)")):
        r = record[engine]
        loss = np.asarray(r["train_loss"], dtype=float)
        window = min(25, len(loss))
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(loss)), smooth, color=colour, lw=1.4,
                label=f"{label}: {r['train_seconds']:.0f} s, {r['tokens_per_second']:.0f} tokens/s")
        ax.plot([v["step"] for v in r["val"]], [v["val_loss"] for v in r["val"]], "o--", color=colour, ms=4, lw=0.8,
                label=f"validation, final {r['final_val_loss']:.4f}")
    ax.set_xlabel("step (8 windows of 256 tokens)")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(f"The bundled model trained twice on the same batches ({record['threads']} threads, {record['machine']})",
                 fontsize=10)
    ax.set_ylim(top=min(8.0, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
