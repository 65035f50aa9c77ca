"""Plot the six RoPE variants: the wavelength of every rotary frequency, and how each scaling type changes it.

    python examples/rope_variants.py                 # writes OUT/rope_variants.png
    python examples/rope_variants.py --factor 8 --out figures

RoPE turns feature pair i of a query or key by the angle m * theta_i at position m. Pair i comes back
to where it started every 2*pi/theta_i positions (its wavelength). Scaling for longer contexts
stretches those wavelengths: linear stretches all of them by the factor, "dynamic" NTK grows the
base with the sequence length, YaRN and Llama 3.1 stretch only the long wavelengths and keep the
short ones, LongRoPE uses one (searched) factor per pair. Needs matplotlib; no model.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from tinyllama_ref.config import LlamaConfig
from tinyllama_ref.rope_scaling import rope_inv_freq

HEAD_DIM = 128  # LLaMA-7B: 4096 hidden / 32 heads
TRAINED = 4096  # the context length the model was trained with (Llama-2)


def variant_configs(factor: float = 4.0) -> dict[str, tuple[LlamaConfig, int]]:
    """One config per rope type, each extending a 4096-token model `factor` times; and the sequence
    length to evaluate it at (dynamic and longrope choose their frequencies from it)."""
    long = int(TRAINED * factor)
    half = HEAD_DIM // 2
    ramp = np.linspace(0, 1, half) ** 2  # illustrative LongRoPE factors: 1 for fast pairs, `factor` for slow
    cases = {
        "default": (dict(max_position_embeddings=TRAINED), None),
        "linear": (dict(max_position_embeddings=TRAINED), {"rope_type": "linear", "factor": factor}),
        "dynamic": (dict(max_position_embeddings=TRAINED), {"rope_type": "dynamic", "factor": factor}),
        "yarn": (dict(max_position_embeddings=long),
                 {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": TRAINED}),
        "longrope": (dict(max_position_embeddings=long),
                     {"rope_type": "longrope", "factor": factor, "original_max_position_embeddings": TRAINED,
                      "short_factor": [1.0] * half, "long_factor": list(1 + (factor - 1) * ramp)}),
        "llama3": (dict(max_position_embeddings=long),
                   {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": TRAINED}),
    }
    return {name: (LlamaConfig(hidden_size=HEAD_DIM * 32, num_attention_heads=32, rope_scaling=scaling, **kw), long)
            for name, (kw, scaling) in cases.items()}


def plot_rope_variants(path: Path, factor: float = 4.0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = variant_configs(factor)
    base, _ = rope_inv_freq(configs["default"][0])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"default": "k-", "linear": "C0--", "dynamic": "C1-", "yarn": "C2-", "longrope": "C3-.", "llama3": "C4-"}
    for name, (config, seq_len) in configs.items():
        inv_freq, attention_factor = rope_inv_freq(config, seq_len=seq_len)
        label = name + (f" (attention x{attention_factor:.2f})" if attention_factor != 1.0 else "")
        i = np.arange(len(inv_freq))
        ax1.semilogy(i, 2 * np.pi / inv_freq, styles[name], label=label, lw=1.6)
        ax2.plot(i, base / inv_freq, styles[name], label=name, lw=1.6)
    ax1.axhline(TRAINED, color="grey", lw=0.8, ls=":")
    ax1.text(1, TRAINED * 1.3, f"trained context {TRAINED}", color="grey", fontsize=8)
    ax1.set(xlabel="feature pair i (of head_dim/2 = 64)", ylabel="wavelength 2π/θᵢ (positions)",
            title="RoPE wavelengths per scaling type")
    ax2.set(xlabel="feature pair i", ylabel="stretch: θᵢ(default) / θᵢ(scaled)",
            title=f"How much each pair is slowed (factor {factor:g}, at {int(TRAINED * factor)} tokens)")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factor", type=float, default=4.0, help="context extension factor (default 4)")
    ap.add_argument("--out", type=Path, help="output directory (default: a new temporary directory)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tinyllama_rope_"))
    out.mkdir(parents=True, exist_ok=True)
    for name, (config, seq_len) in variant_configs(args.factor).items():
        inv_freq, attention_factor = rope_inv_freq(config, seq_len=seq_len)
        print(f"{name:9s} longest wavelength {2 * np.pi / inv_freq.min():12.0f} positions, "
              f"shortest {2 * np.pi / inv_freq.max():6.2f}, attention factor {attention_factor:.3f}")
    path = plot_rope_variants(out / "rope_variants.png", args.factor)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
