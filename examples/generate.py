"""Generate text with the bundled model: load a checkpoint and its tokenizer, stream a continuation.

    python examples/generate.py                                   # the bundled model, a Bible-style prompt
    python examples/generate.py --prompt "And God said" --max-new-tokens 60 --seed 1
    python examples/generate.py --model ~/models/Llama-2-7b-hf     # any Hugging Face LLaMA directory

The text streams to the terminal as it is generated and is also written to OUT/generated.txt.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import tinyllama_ref as tl
from tinyllama_ref.cli import default_model_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint directory or .gguf file (default: the bundled model)")
    ap.add_argument("--prompt", default="In the beginning God created")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    ap.add_argument("--seed", type=int, default=0, help="same seed, same text")
    ap.add_argument("--out", type=Path, help="output directory (default: a new temporary directory)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tinyllama_generate_"))
    out.mkdir(parents=True, exist_ok=True)

    model_dir = Path(args.model) if args.model else default_model_dir()
    model = tl.load(model_dir)  # config.json + model.safetensors -> params (memory-mapped) and config
    tokenizer = tl.load_tokenizer(model_dir)  # tokenizer.model (SentencePiece) beside the weights

    stats = tl.GenerationStats()
    pieces = []
    print(args.prompt, end="", flush=True)
    for delta in tl.stream(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, seed=args.seed, stats=stats):
        pieces.append(delta)  # whole characters only: a multi-byte character arrives in one piece
        print(delta, end="", flush=True)
    print()
    print(f"[{stats.prompt_tokens} prompt tokens, {stats.new_tokens} new tokens, "
          f"{stats.decode_tokens_per_second:.0f} tok/s, stopped by {stats.stop_reason}]", file=sys.stderr)

    path = out / "generated.txt"
    path.write_text(args.prompt + "".join(pieces) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
