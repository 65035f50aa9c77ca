"""Check llama.cpp against this package: SmolLM2-135M's logits, and tokenizers on generated strings.

    python tools/llamacpp_parity.py [--prompts 3] [--tokens 64] [--strings 2000] [--skip-build] [--json PATH]

llama.cpp runs through its Python binding, llama-cpp-python 0.3.36, built once from its PyPI
source archive (CPU only; 38 minutes on two cores shared with other jobs) into its own virtual environment
under the cache (<cache>/llamacpp-venv, with the system's site-packages for numpy); a venv that
already imports llama_cpp 0.3.36 is never rebuilt. Its side runs in that venv, as this same file
with `--worker JOB.json`, and writes its logits and token ids to an .npz; our side runs here.

Logits: the same token ids (our tokenizer's, cut to --tokens) go through both, and each position's
logits are compared: top-1 agreement, max |Δlogit|, and the KL divergence KL(ours || llama.cpp) of
the two softmaxes. Three runs:

    Q4_1 GGUF   the published file (Q4_1 layers, Q8_0 embeddings). We dequantize the weights and
                compute in float32; llama.cpp multiplies the blocks directly, with the activations
                quantized to 8 bits (Q8_1 / Q8_0) first, so some difference is expected.
    F32 GGUF    the same weights written as float32 by llama.cpp's own convert_hf_to_gguf.py, from
                our converted checkpoint (<cache>/models/smollm2); a float32 comparison, once with
                llama.cpp's default float16 KV cache and once with a float32 one.

Tokenizers: --strings strings from a seeded generator (`generate_strings`: a pure `random.Random`
mix of words, whitespace runs, digits, punctuation, letters of many scripts, combining marks,
emoji sequences and special-token look-alikes; no hypothesis, so a run is repeatable) are encoded
by llama.cpp (vocab_only) and by us, for SmolLM2's GGUF vocabulary and llama.cpp's test
vocabularies llama-spm and llama-bpe, both with special tokens parsed and without.

The tables are printed as Markdown and written with the timings to --json
(default <cache>/llamacpp-parity.json). The exit status is 1 when a row crosses the limits of
`verdict` (a tokenizer mismatch, a float32 row beyond rounding, a Q4_1 row beyond 8-bit activations),
so the tool can stand in CI. The package never imports this file.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

SPEC = "llama-cpp-python==0.3.36"
VERSION = "0.3.36"
SDIST_ROOT = f"llama_cpp_python-{VERSION}"
# CPU only, no OpenMP (ggml's own thread pool), nothing but the library the binding loads
CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
              "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF")
VOCABULARIES = ("llama-spm", "llama-bpe")  # llama.cpp's test vocabularies, besides SmolLM2's own
GGML_F32, GGML_F16 = 0, 1  # ggml_type ids, for the KV cache

PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, an oil-based ink and a wooden screw press adapted from those used to make wine. "
    "Within fifty years, presses in more than two hundred European cities had printed millions of books, "
    "and the price of a copy fell so far that a student could own the texts he studied.",
    "def fibonacci(n: int) -> list[int]:\n    \"\"\"The first n Fibonacci numbers.\"\"\"\n    out = [0, 1]\n"
    "    while len(out) < n:\n        out.append(out[-1] + out[-2])\n    return out[:n]\n\n\n"
    "if __name__ == \"__main__\":\n    for i, x in enumerate(fibonacci(12)):\n        print(f\"{i:3d} {x:6d}\")\n",
    "<|im_start|>user\nWhat is 17 × 23, and why does the sky look blue at noon but red at sunset?<|im_end|>\n"
    "<|im_start|>assistant\n17 × 23 = 391. Sunlight is scattered by the molecules of the air, and blue light "
    "(short wavelengths) is scattered far more than red: at noon it reaches you from every direction.",
]


# --- metrics (pure) ------------------------------------------------------------------------------------

def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64: x - max - log Σ exp(x - max)."""
    x = np.asarray(logits, np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl_divergence(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """KL(p || q) = Σ_v p_v (log p_v - log q_v) per position, p = softmax(ours), q = softmax(theirs).

    Zero when the distributions agree; in nats. [..., V], [..., V] -> [...]
    """
    log_p, log_q = log_softmax(ours), log_softmax(theirs)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def top1_agreement(ours: np.ndarray, theirs: np.ndarray) -> float:
    """The fraction of positions whose most likely next token is the same on both sides."""
    return float(np.mean(np.argmax(ours, axis=-1) == np.argmax(theirs, axis=-1)))


def logit_stats(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Per-position agreement of two [positions, V] logit arrays, summarised."""
    if ours.shape != theirs.shape:
        raise ValueError(f"logits of different shapes: ours {ours.shape}, llama.cpp {theirs.shape}")
    kl = kl_divergence(ours, theirs)
    return {"positions": int(ours.shape[0]), "top1": top1_agreement(ours, theirs),
            "max_abs": float(np.abs(np.asarray(ours, np.float64) - theirs).max()),
            "mean_kl": float(kl.mean()), "max_kl": float(kl.max())}


# --- deterministic strings for the tokenizers (pure) -----------------------------------------------------

WORDS = ["the", "The", "hello", "world", "token", "llama", "I", "don't", "it's", "we'll", "you're", "café",
         "naïve", "Straße", "über", "résumé", "HTTP", "camelCase", "snake_case", "x", "a", "UPPER", "lower"]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2009", "\t\t  ", "\v", "\f"]
PUNCTUATION = [".", ",", "!", "?", "...", "'s", "'ll", "n't", "—", "–", "«", "»", "\u201c", "\u201d", "(", ")",
               "[", "]", "{", "}", "#", "@", "$", "%", "&", "*", "/", "\\", "|", "~", "`", "^", "_", "-", "+", "="]
EMOJI = ["😀", "🦙", "👍🏽", "👨‍👩‍👧", "🇫🇷", "🇯🇵", "❤️", "🎉", "🚀", "✨", "🤖", "🏳️‍🌈", "1️⃣", "©", "™"]
SPECIAL_LOOKALIKES = ["<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>",
                      "<0x0A>", "▁", "Ġ", "<|", "|>"]
SCRIPTS = [(0x00C0, 0x00FF), (0x0100, 0x017F), (0x0391, 0x03C9), (0x0410, 0x044F), (0x05D0, 0x05EA),
           (0x0627, 0x064A), (0x0905, 0x0939), (0x0E01, 0x0E30), (0x3041, 0x3096), (0x30A1, 0x30FA),
           (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF)]  # Latin-1 ... CJK, Hangul, emoji blocks
COMBINING = (0x0300, 0x036F)


def _piece(rng: random.Random) -> str:
    """One random piece of text; its kind is drawn first, then its content."""
    kind = rng.random()
    if kind < 0.25:
        return rng.choice(WORDS)
    if kind < 0.40:
        return rng.choice(WHITESPACE)
    if kind < 0.50:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 12)))
    if kind < 0.62:
        return rng.choice(PUNCTUATION)
    if kind < 0.80:
        lo, hi = rng.choice(SCRIPTS)
        return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6)))
    if kind < 0.85:  # a letter with combining marks (NFC would compose some of them)
        return rng.choice("aeiouAEOnc") + "".join(chr(rng.randint(*COMBINING)) for _ in range(rng.randint(1, 3)))
    if kind < 0.93:
        return rng.choice(EMOJI)
    if kind < 0.97:
        return rng.choice(SPECIAL_LOOKALIKES)
    code = rng.randint(1, 0x10FFFF)  # any code point but NUL and the surrogates (UTF-8 cannot carry them)
    return chr(code) if not 0xD800 <= code <= 0xDFFF else "?"


def generate_strings(n: int, seed: int = 0) -> list[str]:
    """n strings of 0 to 12 pieces (see `_piece`), the same ones for the same seed on every machine."""
    rng = random.Random(seed)
    return ["".join(_piece(rng) for _ in range(rng.choice([0, 1, 2, 3, 4, 6, 8, 12]))) for _ in range(n)]


def first_mismatches(strings: list[str], ours: list[list[int]], theirs: list[list[int]], k: int = 3) -> list[dict]:
    """The strings on which the two id lists differ (all of them with `k=None`, else the first k)."""
    bad = [{"text": s, "ours": a, "llama.cpp": b} for s, a, b in zip(strings, ours, theirs) if a != b]
    return bad if k is None else bad[:k]


# --- llama.cpp's side: runs in the llama.cpp venv as `--worker JOB.json` ---------------------------------

def worker(job_path: str) -> None:
    """Run one job of llama.cpp work and write its .npz (numpy and llama_cpp only: no tinyllama_ref here).

    job: {"out": path, "threads": int, "logits": [{"model", "n_ctx", "kv_type", "ids": [[...]], "texts"}],
          "tokenize": [{"vocab", "strings", "special"}]}
    """
    import llama_cpp

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    arrays: dict[str, np.ndarray] = {}
    for i, run in enumerate(job.get("logits", [])):
        kv = {} if run["kv_type"] is None else {"type_k": run["kv_type"], "type_v": run["kv_type"]}
        llm = llama_cpp.Llama(model_path=run["model"], logits_all=True, n_ctx=run["n_ctx"], n_batch=run["n_ctx"],
                              n_threads=job["threads"], n_threads_batch=job["threads"], verbose=False, **kv)
        for j, ids in enumerate(run["ids"]):
            llm.reset()
            llm.eval(ids)
            arrays[f"logits_{i}_{j}"] = np.array(llm.scores[:len(ids)], dtype=np.float32)
        for j, text in enumerate(run["texts"]):  # how llama.cpp itself tokenizes the prompts
            ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)  # as ours: specials parsed
            arrays[f"prompt_ids_{i}_{j}"] = np.array(ids, np.int64)
        del llm
    for i, run in enumerate(job.get("tokenize", [])):
        llm = llama_cpp.Llama(model_path=run["vocab"], vocab_only=True, verbose=False)
        ids = [llm.tokenize(s.encode("utf-8"), add_bos=False, special=run["special"]) for s in run["strings"]]
        arrays[f"ids_{i}"] = np.array([t for row in ids for t in row], np.int64)
        arrays[f"lengths_{i}"] = np.array([len(row) for row in ids], np.int64)
        del llm
    np.savez(job["out"], **arrays)


def run_llamacpp(python: Path, job: dict, threads: int) -> dict[str, np.ndarray]:
    """Run `job` in the llama.cpp venv (a subprocess of this file); its arrays."""
    with tempfile.TemporaryDirectory(prefix="llamacpp-parity-") as tmp:
        job = dict(job, out=str(Path(tmp) / "out.npz"), threads=threads)
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        env = dict(os.environ, PYTHONPATH="")  # the venv's own llama_cpp, never a checkout's
        # llama.cpp logs to stderr even with verbose=False (a vocab_only model warns of n_ctx_train 0 per context)
        result = subprocess.run([str(python), __file__, "--worker", str(job_path)], env=env, stderr=subprocess.PIPE,
                                text=True, errors="replace")
        if result.returncode != 0:
            raise SystemExit(f"the llama.cpp worker failed (exit {result.returncode}):\n{result.stderr[-5000:]}")
        with np.load(job["out"]) as f:
            return {k: f[k] for k in f.files}


def split_rows(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    """[1, 2, 3, 4, 5], [2, 0, 3] -> [[1, 2], [], [3, 4, 5]]"""
    ends = np.cumsum(lengths)
    return [flat[e - n:e].tolist() for e, n in zip(ends, lengths)]


# --- the cached llama.cpp build --------------------------------------------------------------------------

def venv_python(cache: Path) -> Path:
    return cache / "llamacpp-venv" / "bin" / "python"


def installed_version(python: Path) -> str | None:
    """The llama_cpp version that `python` imports, or None (no venv, not installed, broken build)."""
    if not python.is_file():
        return None
    result = subprocess.run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=""))
    return result.stdout.strip() if result.returncode == 0 else None


def build_llamacpp(cache: Path, sdist: Path) -> float:
    """Make <cache>/llamacpp-venv and `pip install` the source archive into it; the wall-clock seconds.

    The compiler output goes to <cache>/llamacpp-venv/build.log.
    """
    venv = cache / "llamacpp-venv"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2),
               PYTHONPATH="")
    log = venv / "build.log"
    print(f"building {SPEC} from {sdist.name} into {venv} (log: {log}); this takes a while ...",
          file=sys.stderr, flush=True)
    with open(log, "w") as f:
        result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir", "-v",
                                 str(sdist)], stdout=f, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"building {SPEC} failed (exit {result.returncode}); see {log}")
    seconds = time.perf_counter() - t0
    print(f"built {SPEC} in {seconds / 60:.1f} min", file=sys.stderr, flush=True)
    return seconds


def sdist_file(cache: Path, member: str) -> Path:
    """A file of llama-cpp-python's source archive, extracted once under <cache>/llamacpp (as the tests do)."""
    from tinyllama_ref.fetch import cached_distribution

    dest = cache / "llamacpp" / SDIST_ROOT / member
    if dest.exists():
        return dest
    archive = cached_distribution(SPEC, sdist=True, cache_dir=cache, about="llama.cpp's source")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar, tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        names = [m for m in tar.getmembers() if m.name == f"{SDIST_ROOT}/{member}"
                 or m.name.startswith(f"{SDIST_ROOT}/{member}/")]
        if not names:
            raise SystemExit(f"{archive} has no {member}")
        tar.extractall(tmp, members=names, filter="data")
        (Path(tmp) / SDIST_ROOT / member).replace(dest)  # whole or not at all
    return dest


def f32_gguf(cache: Path, hf_dir: Path) -> Path:
    """SmolLM2 as a float32 GGUF, written once by llama.cpp's convert_hf_to_gguf.py from our converted checkpoint."""
    out = cache / "llamacpp" / "smollm2-f32.gguf"
    if out.is_file():
        return out
    gguf_py = sdist_file(cache, "vendor/llama.cpp/gguf-py")
    sdist_file(cache, "vendor/llama.cpp/conversion")  # the converter's per-architecture modules
    script = sdist_file(cache, "vendor/llama.cpp/convert_hf_to_gguf.py")
    tmp = out.with_suffix(".gguf.part")
    env = dict(os.environ, PYTHONPATH=str(gguf_py))  # the converter's own gguf package, not the installed one
    result = subprocess.run([sys.executable, str(script), str(hf_dir), "--outtype", "f32", "--outfile", str(tmp)],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"convert_hf_to_gguf.py failed on {hf_dir}:\n{result.stderr[-3000:]}")
    tmp.replace(out)
    return out


# --- the report ----------------------------------------------------------------------------------------

def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def logits_table(results: list[dict]) -> str:
    rows = [[r["weights"], r["kv_cache"], r["prompt"], r["positions"], f"{r['top1']:.1%}", f"{r['max_abs']:.3g}",
             f"{r['mean_kl']:.2e}", f"{r['max_kl']:.2e}", "yes" if r["same_prompt_ids"] else "NO"] for r in results]
    return markdown_table(["weights", "llama.cpp KV cache", "prompt", "positions", "top-1 agree", "max abs dlogit",
                           "mean KL", "max KL", "same prompt ids"], rows)


def tokenizer_table(results: list[dict]) -> str:
    rows = [[r["vocabulary"], "parsed" if r["special"] else "as text", r["strings"], r["tokens"], r["mismatches"]]
            for r in results]
    return markdown_table(["vocabulary", "special tokens", "strings", "llama.cpp ids", "mismatches"], rows)


def verdict(logit_results: list[dict], tok_results: list[dict]) -> list[str]:
    """What crosses the limits, one line each (none: all agree).

    Float32 weights and cache: max|Δlogit| < 1e-3 and the same top-1 everywhere (measured 7.1e-5:
    summation order). Float16 cache: mean KL < 1e-4 (measured 7.9e-7). Q4_1: mean KL < 2e-2 and top-1
    >= 85 % (measured 2.5e-3 to 4.5e-3 and >= 93.8 %; a wrong block layout gives KL of order 1).
    Tokenizers and the prompts' ids: no mismatch at all.
    """
    problems = []
    for r in logit_results:
        where = f"{r['weights']}, {r['kv_cache']} cache, prompt {r['prompt']}"
        if r["weights"] == "F32 GGUF" and r["kv_cache"] == "F32":
            bad = r["max_abs"] >= 1e-3 or r["top1"] < 1.0
        elif r["weights"] == "F32 GGUF":
            bad = r["mean_kl"] >= 1e-4
        else:
            bad = r["mean_kl"] >= 2e-2 or r["top1"] < 0.85
        if bad or not r["same_prompt_ids"]:
            problems.append(f"DISAGREES: {where}: top-1 {r['top1']:.1%}, max abs dlogit {r['max_abs']:.3g}, "
                            f"mean KL {r['mean_kl']:.2e}, same prompt ids: {r['same_prompt_ids']}")
    problems += [f"DISAGREES: tokenizer {r['vocabulary']} (special tokens {'parsed' if r['special'] else 'as text'}): "
                 f"{r['mismatches']} of {r['strings']} strings" for r in tok_results if r["mismatches"]]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=3, help=f"how many of the {len(PROMPTS)} fixed prompts")
    parser.add_argument("--tokens", type=int, default=64, help="token ids per prompt")
    parser.add_argument("--strings", type=int, default=2000, help="generated strings per tokenizer check (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="the string generator's seed")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp's threads")
    parser.add_argument("--skip-build", action="store_true",
                        help="never build llama.cpp: stop with a message when the cached venv lacks it")
    parser.add_argument("--build-only", action="store_true",
                        help="build llama.cpp into the cached venv if it is not there, then stop (CI times this step)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results "
                        "(default <cache>/llamacpp-parity.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if not 1 <= args.prompts <= len(PROMPTS):
        parser.error(f"--prompts must be between 1 and {len(PROMPTS)}")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, when run from it
    import tinyllama_ref as tl
    from tinyllama_ref.fetch import cache_root, cached_distribution, fetch_model, KNOWN_MODELS

    t_start = time.perf_counter()
    cache = cache_root()
    python = venv_python(cache)
    build_s = None
    if installed_version(python) != VERSION:
        if args.skip_build:
            raise SystemExit(f"{python} does not import llama_cpp {VERSION} and --skip-build was given")
        build_s = build_llamacpp(cache, cached_distribution(SPEC, sdist=True, cache_dir=cache))
        if installed_version(python) != VERSION:
            raise SystemExit(f"{python} still does not import llama_cpp {VERSION} after the build")
    if args.build_only:
        print(f"{python} imports llama_cpp {VERSION}" + (f" (built in {build_s / 60:.1f} min)" if build_s else ""))
        return 0

    hf_dir = fetch_model("smollm2", cache)
    q4_gguf = hf_dir / Path(KNOWN_MODELS["smollm2"].member).name
    t0 = time.perf_counter()
    f32 = f32_gguf(cache, hf_dir)
    convert_s = time.perf_counter() - t0

    # our side: the same ids for every run (our tokenizer's, cut to --tokens)
    tokenizer = tl.load_tokenizer(q4_gguf)
    prompts = PROMPTS[:args.prompts]
    prompt_ids = [tokenizer.encode(p, add_bos=False) for p in prompts]  # whole: llama.cpp's must equal them
    ids = [row[:args.tokens] for row in prompt_ids]
    runs = [("Q4_1 GGUF", q4_gguf, None), ("F32 GGUF", f32, None), ("F32 GGUF", f32, GGML_F32)]
    n_ctx = max(256, -(-max(map(len, ids)) // 256) * 256)
    strings = generate_strings(args.strings, args.seed)
    vocabs = {"SmolLM2 (gpt2, smollm)": q4_gguf} | {
        name: sdist_file(cache, f"vendor/llama.cpp/models/ggml-vocab-{name}.gguf") for name in VOCABULARIES}
    tok_runs = [(name, path, special) for name, path in vocabs.items() for special in (False, True)]
    job = {"logits": [{"model": str(path), "n_ctx": n_ctx, "kv_type": kv, "ids": ids, "texts": prompts}
                      for _, path, kv in runs],
           "tokenize": [{"vocab": str(path), "strings": strings, "special": special}
                        for _, path, special in tok_runs] if strings else []}
    t0 = time.perf_counter()
    theirs = run_llamacpp(python, job, args.threads)
    llamacpp_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ours_logits = {}  # weights file -> [positions, V] per prompt: llama.cpp's KV cache type is not ours to vary
    for path in dict.fromkeys(path for _, path, _ in runs):
        model = tl.load(path)
        ours_logits[path] = [np.asarray(model([row]).logits[0], np.float32) for row in ids]
        del model
    logit_results = []
    for i, (weights, path, kv) in enumerate(runs):
        for j, ours in enumerate(ours_logits[path]):
            stats = logit_stats(ours, theirs[f"logits_{i}_{j}"])
            same = theirs[f"prompt_ids_{i}_{j}"].tolist() == prompt_ids[j]
            logit_results.append({"weights": weights, "kv_cache": "F16 (default)" if kv is None else "F32",
                                  "prompt": j, **stats, "same_prompt_ids": same})
    # the F32 GGUF holds our checkpoint's weights (themselves our dequantization of the Q4_1 file)
    same_weights = float(np.abs(np.asarray(ours_logits[f32][0], np.float64)
                                - np.asarray(tl.load(hf_dir)([ids[0]]).logits[0])).max())
    tok_results = []
    for i, (name, path, special) in enumerate(tok_runs if strings else []):
        tok = tl.load_tokenizer(path)
        ours = [tok.encode(s, add_bos=False, add_eos=False, split_special_tokens=not special) for s in strings]
        bad = first_mismatches(strings, ours, split_rows(theirs[f"ids_{i}"], theirs[f"lengths_{i}"]), k=None)
        tok_results.append({"vocabulary": name, "special": special, "strings": len(strings),
                            "tokens": int(theirs[f"lengths_{i}"].sum()),
                            "mismatches": len(bad), "first": bad[:5]})
    ours_s = time.perf_counter() - t0

    print("\n## Logits: this package vs llama.cpp, SmolLM2-135M\n")
    print(logits_table(logit_results))
    print(f"\nours on the F32 GGUF vs ours on {hf_dir} (prompt 0): max abs dlogit {same_weights:.3g}")
    if tok_results:
        print(f"\n## Tokenizers: {len(strings)} generated strings (seed {args.seed})\n")
        print(tokenizer_table(tok_results))
        for r in tok_results:
            for bad in r["first"][:3]:
                print(f"- {r['vocabulary']} ({'special parsed' if r['special'] else 'special as text'}): "
                      f"{bad['text']!r}: ours {bad['ours']}, llama.cpp {bad['llama.cpp']}")
    total_s = time.perf_counter() - t_start
    timings = {"build_s": build_s, "convert_f32_s": convert_s, "llamacpp_s": llamacpp_s, "ours_s": ours_s,
               "total_s": total_s}
    print(f"\ntimes: llama.cpp side {llamacpp_s:.0f} s, ours {ours_s:.0f} s, F32 conversion {convert_s:.0f} s, "
          f"build {'cached' if build_s is None else f'{build_s:.0f} s'}, total {total_s:.0f} s")
    out = args.json or cache / "llamacpp-parity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"llama_cpp_python": VERSION, "cmake_args": CMAKE_ARGS, "tokens": args.tokens, "seed": args.seed,
              "prompts": prompts, "logits": logit_results,
              "f32_gguf_vs_checkpoint_max_abs": same_weights, "tokenizers": tok_results, "timings": timings}
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out)
    print(f"results written to {out}")
    problems = verdict(logit_results, tok_results)
    print("\n".join(problems) if problems else "verdict: llama.cpp and this package agree within the limits")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
