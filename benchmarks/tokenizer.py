"""Encode throughput of our pure-Python SentencePiece BPE against the `sentencepiece` library.

    python benchmarks/tokenizer.py [--model tokenizer.model] [--mb 5]

Text: the King James Bible (public domain), extracted with the `bible` program of Debian's
bible-kjv package (`apt-get install bible-kjv`), topped up to the requested size with the Python
standard library's own source code (English comments and docstrings, code with runs of spaces).
Without `bible`, the text is standard-library source alone. The tokenizer defaults to Mistral-7B
v0.1's tokenizer.model (LLaMA's settings), cached by the tests (tests/realdata.py).
Both tokenizers are checked to give the same ids before anything is timed.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinyllama_ref.fetch import TEST_MEMBERS, member_path  # noqa: E402
from tinyllama_ref.tokenizer.sp_model import load_sentencepiece_model  # noqa: E402

MISTRAL = "mistral-common==1.13.1"
DEFAULT_MODEL = member_path(MISTRAL, TEST_MEMBERS[MISTRAL])  # the tests' copy, under $TINYLLAMA_CACHE


def benchmark_text(n_bytes: int) -> tuple[str, str]:
    """(text of at least n_bytes UTF-8 bytes, a line saying where it came from)."""
    parts, sources = [], []
    if shutil.which("bible"):
        kjv = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=120).stdout
        if kjv:
            parts.append(kjv)
            sources.append(f"King James Bible via `bible -f gen1:1-rev22:21` ({len(kjv.encode()) / 1e6:.1f} MB)")
    size = sum(len(p.encode()) for p in parts)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code_bytes = 0
    for path in sorted(stdlib.glob("*.py")):
        if size >= n_bytes:
            break
        code = path.read_text(encoding="utf-8", errors="replace")
        parts.append(code)
        size += len(code.encode())
        code_bytes += len(code.encode())
    if code_bytes:
        sources.append(f"Python {sys.version.split()[0]} standard library source ({code_bytes / 1e6:.1f} MB)")
    return "\n".join(parts), " + ".join(sources)


def throughput(encode, lines, n_bytes) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = [encode(line) for line in lines]
    return n_bytes / 1e6 / (time.perf_counter() - t0), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--mb", type=float, default=5.0)
    args = parser.parse_args()
    if not args.model.exists():
        sys.exit(f"{args.model} not found: `tinyllama-ref fetch test-data` downloads it, or pass --model")
    import sentencepiece as spm

    text, source = benchmark_text(int(args.mb * 1e6))
    lines = text.splitlines()
    n_bytes = len(text.encode())
    sp = spm.SentencePieceProcessor(model_file=str(args.model))
    ours = load_sentencepiece_model(args.model)
    print(f"text: {n_bytes / 1e6:.2f} MB, {len(lines)} lines: {source}")
    print(f"tokenizer: {args.model}")

    ours.word_cache.clear()
    ours_cold, ours_ids = throughput(ours.encode, lines, n_bytes)
    ours_warm, _ = throughput(ours.encode, lines, n_bytes)
    sp_rate, sp_ids = throughput(sp.encode, lines, n_bytes)
    if ours_ids != sp_ids:
        bad = next(k for k, (a, b) in enumerate(zip(ours_ids, sp_ids)) if a != b)
        sys.exit(f"MISMATCH on line {bad}: {lines[bad]!r}")
    print(f"ids identical on all {len(lines)} lines ({sum(map(len, sp_ids))} tokens)")
    print(f"sentencepiece            {sp_rate:8.2f} MB/s")
    print(f"ours (word cache cold)   {ours_cold:8.2f} MB/s   ratio ours/sentencepiece = 1/{sp_rate / ours_cold:.1f}")
    print(f"ours (word cache warm)   {ours_warm:8.2f} MB/s   ratio ours/sentencepiece = 1/{sp_rate / ours_warm:.1f}")


if __name__ == "__main__":
    main()
