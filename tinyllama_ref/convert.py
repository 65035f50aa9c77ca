"""`tinyllama-ref convert`: a GGUF file or Meta's checkpoint directory written as a Hugging Face
checkpoint directory that transformers loads, with no need of llama.cpp, Meta's code or this package.

The model comes from `formats/` (`gguf.read_gguf`, `meta.read_meta_checkpoint`), the tokenizer from
`tokenizer/` (a GGUF vocabulary as `gguf_vocab` reads it; Meta's tokenizer.model as it is), and its
tokenizer_config.json from the one writer of that file (`hf_api.tokenizer_config`). This module sits
above both packages, so neither imports the other to convert.

Everything is read and checked before anything is written. An `out_dir` that is the source, or a
folder holding it, is refused; a non-empty one is refused unless `force`; the files are written into
a temporary directory beside it, which then takes its place (`hf_writer.write_checkpoint_dir`, the
writer `Model.save_pretrained` uses), so a finished directory holds this checkpoint and nothing else.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from .errors import CheckpointError
from .formats.checkpoint import check_output_dir
from .formats.gguf import read_gguf
from .formats.hf_writer import write_checkpoint_dir
from .formats.meta import read_meta_checkpoint
from .formats.paths import GGUF, META_DIR, what_path_holds
from .tokenizer.gguf_vocab import tokenizer_from_gguf_metadata
from .tokenizer.hf_api import tokenizer_config, vocabulary_file
from .tokenizer.loaders import tokenizer_from_file


def convert(source: str | Path, out_dir: str | Path, progress: bool = True, force: bool = False,
            llama_version: str = "1") -> Path:
    """Write `source` (a .gguf file or Meta's checkpoint directory) as an HF checkpoint in `out_dir`,
    saying what it wrote when `progress`. `llama_version` (Meta's only): "1" or "2", the context length."""
    kind = what_path_holds(source, role="checkpoint to convert")
    if kind == GGUF:
        out = write_gguf_as_hf(source, out_dir, progress=progress, force=force)
    elif kind == META_DIR:
        out = write_meta_as_hf(source, out_dir, force=force, llama_version=llama_version)
    else:
        raise CheckpointError(f"{source}: convert reads a .gguf file or Meta's checkpoint directory (params.json "
                              f"+ consolidated.*.pth); this is a {kind}")
    if progress:
        print(_summary(out, kind))
    return out


def write_gguf_as_hf(gguf_path: str | Path, out_dir: str | Path, progress: bool = False, force: bool = False) -> Path:
    """config.json, model.safetensors (float32), generation_config.json, and tokenizer.json +
    tokenizer_config.json when the file has a tokenizer. Returns `out_dir`."""
    check_outside(gguf_path, out_dir)
    out = check_output_dir(out_dir, force)
    config, tensors, metadata = read_gguf(gguf_path, progress=progress)
    files = {"config.json": config, "generation_config.json": _generation_config(config, "pad_token_id")}
    if "tokenizer.ggml.model" in metadata:
        tok = tokenizer_from_gguf_metadata(metadata, str(gguf_path))
        files.update(_tokenizer_files(tok, config))
    else:
        warnings.warn(f"{gguf_path}: no tokenizer in the metadata; wrote the model without one", stacklevel=2)
    return write_checkpoint_dir(out, files, tensors, replace_dir=True)


def write_meta_as_hf(ckpt_dir: str | Path, out_dir: str | Path, force: bool = False, llama_version: str = "1") -> Path:
    """config.json, generation_config.json, model.safetensors (the file's dtypes), and tokenizer.model
    (copied as it is) with its tokenizer_config.json. Returns `out_dir`."""
    check_outside(ckpt_dir, out_dir)
    out = check_output_dir(out_dir, force)
    ckpt_dir = Path(ckpt_dir)
    config, tensors, bf16 = read_meta_checkpoint(ckpt_dir, llama_version)
    files = {"config.json": config, "generation_config.json": _generation_config(config)}
    copies = {}
    if (ckpt_dir / "tokenizer.model").is_file():
        tok = tokenizer_from_file(ckpt_dir / "tokenizer.model")
        files.update(_tokenizer_files(tok, config))
        del files["tokenizer.model"]  # its bytes as read: the file is copied instead
        copies["tokenizer.model"] = ckpt_dir / "tokenizer.model"
    return write_checkpoint_dir(out, files, tensors, bf16=bf16, copies=copies, replace_dir=True)


def check_outside(source: str | Path, out_dir: str | Path) -> None:
    """Refuse an output directory that is the source or holds it: it is replaced whole, the source with it."""
    src, out = Path(source).resolve(), Path(out_dir).resolve()
    if out == src or out in src.parents:
        what = "the checkpoint to convert" if out == src else f"a folder holding {source}"
        raise CheckpointError(f"{out_dir} is {what}: choose an output directory outside it")


def _generation_config(config: dict, *extra: str) -> dict:
    """The special token ids generation uses, those the config has."""
    return {k: config[k] for k in ("bos_token_id", "eos_token_id", *extra) if config[k] is not None}


def _tokenizer_files(tok, config: dict) -> dict:
    """The vocabulary file and tokenizer_config.json (its template inline, as converters write it)."""
    tok.model_max_length = config["max_position_embeddings"]
    name, vocabulary = vocabulary_file(tok)
    return {name: vocabulary, "tokenizer_config.json": tokenizer_config(tok, chat_template_inline=True)}


def _summary(out: Path, kind: str) -> str:
    """One line: what was written, and its shape."""
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    what = ("(float32 safetensors)" if kind == GGUF
            else f", context {config['max_position_embeddings']} ({config['torch_dtype']} safetensors)")
    return (f"wrote {out}: {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
            f"{config['num_attention_heads']} heads / {config['num_key_value_heads']} KV heads, "
            f"vocab {config['vocab_size']}" + (" " if kind == GGUF else "") + what)
