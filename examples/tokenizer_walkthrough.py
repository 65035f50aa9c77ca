"""Walk through the tokenizer on one sentence: normalize, merge, look up ids, fall back to bytes, decode.

    python examples/tokenizer_walkthrough.py
    python examples/tokenizer_walkthrough.py --text "Café ☃ and the LORD" --model DIR

Every step calls the package's own functions (tinyllama_ref/tokenizer/), so what is printed is
exactly what `tokenizer.encode` does. The report is printed and written to OUT/tokenizer_walkthrough.txt.
"""
import argparse
import sys
import tempfile
from pathlib import Path

from tinyllama_ref.cli import default_model_dir
from tinyllama_ref.tokenizer import load_tokenizer
from tinyllama_ref.tokenizer.bpe import bpe_merge
from tinyllama_ref.tokenizer.sp_model import SentencePieceBPE
from tinyllama_ref.tokenizer.sp_normalizer import normalize

DEFAULT_TEXT = "In the beginning God created the heaven and the earth. Café ☃!"


def walkthrough(tokenizer, text: str) -> list[str]:
    """The report, line by line."""
    lines = [f"text:        {text!r}"]
    sp = tokenizer.model
    if not isinstance(sp, SentencePieceBPE):
        raise SystemExit(f"this walk-through follows SentencePiece BPE; this tokenizer is a {type(sp).__name__}")

    # 1. Normalize: spaces become "▁" (U+2581) and a "dummy prefix" space is added in front.
    normalized = normalize(sp.normalizer, text)
    lines.append(f"normalized:  {normalized!r}")

    # 2. BPE, one word at a time: start from characters and merge the adjacent pair whose
    #    concatenation is the best-scoring piece, until no adjacent pair is a piece.
    lines.append("")
    lines.append("BPE merges, word by word (the pair merged at each step in brackets):")
    words = dict.fromkeys(w for w in normalized.replace("\u2581", " \u2581").split(" ") if w)  # each once
    for word in words:
        symbols = list(word)
        lines.append(f"  {' '.join(symbols)}")
        while True:  # the plain O(n^2) loop, for reading; bpe_merge does the same faster (a heap for long words)
            pairs = [(sp.merge_priority.get(a + b), k) for k, (a, b) in enumerate(zip(symbols, symbols[1:]))]
            pairs = [(p, k) for p, k in pairs if p is not None]
            if not pairs:
                break
            _, k = min(pairs)  # best score first, leftmost on ties
            merged = symbols[k] + symbols[k + 1]
            symbols = symbols[:k] + [merged] + symbols[k + 2:]
            lines.append(f"    [{merged}]  ->  {' '.join(symbols)}")
        fast = bpe_merge(list(word), lambda a, b: sp.merge_priority.get(a + b))
        assert symbols == fast, (symbols, fast)  # the reading version agrees with the package's

    # 3. Look the pieces up; a piece that is not in the vocabulary falls back to its UTF-8 bytes.
    ids = tokenizer.encode(text)
    lines.append("")
    lines.append(f"ids (BOS={tokenizer.bos_id} first, as LLaMA's tokenizer adds it):")
    for i in ids:
        piece = tokenizer.id_to_piece(i)
        note = ""
        if piece.startswith("<0x") and piece.endswith(">"):
            note = "  byte fallback: one raw UTF-8 byte"
        elif i in tokenizer.special_ids:
            note = "  special token"
        lines.append(f"  {i:>6}  {piece!r}{note}")

    # 4. Decode: pieces joined, "▁" back to spaces, bytes reassembled, the dummy prefix dropped.
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    lines.append("")
    lines.append(f"decoded:     {decoded!r}")
    lines.append(f"round trip:  {'exact' if decoded == text else 'differs (normalization changed the text)'}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint directory or tokenizer file (default: the bundled model)")
    ap.add_argument("--text", default=DEFAULT_TEXT)
    ap.add_argument("--out", type=Path, help="output directory (default: a new temporary directory)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tinyllama_tokenizer_"))
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(Path(args.model) if args.model else default_model_dir())
    report = "\n".join(walkthrough(tokenizer, args.text)) + "\n"
    print(report)
    path = out / "tokenizer_walkthrough.txt"
    path.write_text(report, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
