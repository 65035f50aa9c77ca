"""What a path holds: the one place that decides it, for `tl.load`, `load_tokenizer`, `convert` and the CLI.

    HF_DIR          a Hugging Face checkpoint directory (config.json + safetensors, or a tokenizer's files)
    META_DIR        Meta's original checkpoint directory (params.json + consolidated.*.pth, no config.json)
    GGUF            a llama.cpp .gguf file (by its suffix, else by its first four bytes, b"GGUF")
    TOKENIZER_JSON  a tokenizer.json (by its suffix, else by a first byte "{")
    SENTENCEPIECE   any other file: a SentencePiece tokenizer.model

    >>> what_path_holds("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    'gguf'
"""
from __future__ import annotations

from pathlib import Path

HF_DIR, META_DIR, GGUF, TOKENIZER_JSON, SENTENCEPIECE = "hf-dir", "meta-dir", "gguf", "tokenizer.json", "tokenizer.model"


def what_path_holds(path: str | Path, role: str = "model") -> str:
    """One of the kinds above. `role` names what the caller looks for, in the error for a missing path."""
    path = Path(path)
    if path.is_dir():
        return META_DIR if is_meta_checkpoint(path) else HF_DIR
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{role} not found: {path} (no such file or directory)") from None
    except OSError as e:
        raise FileNotFoundError(f"cannot read {path}: {e.strerror or e}") from e
    if path.suffix == ".gguf" or head.startswith(b"GGUF"):
        return GGUF
    if path.suffix == ".json" or head.lstrip().startswith(b"{"):
        return TOKENIZER_JSON
    return SENTENCEPIECE


def is_meta_checkpoint(path: Path) -> bool:
    """A directory with params.json and consolidated.*.pth, and no config.json (which would make it HF's)."""
    return (path.is_dir() and (path / "params.json").is_file() and not (path / "config.json").is_file()
            and any(path.glob("consolidated.*.pth")))
