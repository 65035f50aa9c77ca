"""Build-time generator (mkdocs-gen-files): the "Read the model" chapters, the API reference, the figures.

Nothing here copies the package's source: every chapter is rebuilt from tinyllama_ref/ on each
`mkdocs build`, by tools/docs_annotate.py. One chapter per file, in the order of READING_ORDER
below: the file's docstring as the introduction, then every top-level definition of the file in
file order, prose and code side by side. FIGURES places a figure (or an example's printed output)
after a named definition.

The build warns, and so fails under `mkdocs build --strict`, when READING_ORDER names a file that
does not exist, leaves out a file of the package (an `__init__.py` that only re-exports needs no
chapter), or when FIGURES names a definition that is not there.
"""
from __future__ import annotations

import importlib.util
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from docs_annotate import docstring_to_markdown, module_docstring, module_items, render_item  # noqa: E402

log = logging.getLogger("mkdocs.plugins.gen_pages")
PACKAGE = REPO / "tinyllama_ref"


# -- what the reader reads, in order ----------------------------------------------------------------
# One chapter per file: (path from the repository root, chapter title). Edit freely; the build
# checks the list against the package's files.

READING_ORDER = [
    ("tinyllama_ref/config.py", "The configuration"),
    ("tinyllama_ref/llama.py", "LLaMA, the whole model in one file"),
    ("tinyllama_ref/kv_cache.py", "The KV cache"),
    ("tinyllama_ref/rope_scaling.py", "RoPE scalings for longer contexts"),
    ("tinyllama_ref/activations.py", "Activations other than SiLU"),
    ("tinyllama_ref/open_llama.py", "Open-Llama: the stable embedding"),
    ("tinyllama_ref/tensor_parallel.py", "Tensor parallelism: one all-reduce per pair, and pretraining_tp"),
    ("tinyllama_ref/heads.py", "Heads: next token, classification, none"),
    ("tinyllama_ref/losses.py", "Losses"),
    ("tinyllama_ref/model.py", "The edge: inputs, variants, outputs, loading"),
    ("tinyllama_ref/resize.py", "Resizing the vocabulary: rows for new tokens"),
    ("tinyllama_ref/packing.py", "Packed projections: q/k/v and gate/up in one product"),
    ("tinyllama_ref/fused.py", "Fused kernels: the pointwise steps on CuPy"),
    ("tinyllama_ref/quantize.py", "Weight-only quantization: int8 and int4"),
    ("tinyllama_ref/generation.py", "Generation"),
    ("tinyllama_ref/mask_view.py", "The attention mask, drawn"),
    ("tinyllama_ref/perplexity.py", "Perplexity over sliding windows"),
    ("tinyllama_ref/tokenizer/tokenizer.py", "The tokenizer"),
    ("tinyllama_ref/tokenizer/sp_normalizer.py", "Tokenizer: normalization"),
    ("tinyllama_ref/tokenizer/sp_model.py", "Tokenizer: SentencePiece BPE"),
    ("tinyllama_ref/tokenizer/bpe.py", "Tokenizer: the merge loop"),
    ("tinyllama_ref/formats/protobuf.py", "Tokenizer files: the protobuf wire format"),
    ("tinyllama_ref/formats/sentencepiece_file.py", "Tokenizer files: reading tokenizer.model"),
    ("tinyllama_ref/tokenizer/hf_bpe.py", "Tokenizer: byte-level BPE"),
    ("tinyllama_ref/tokenizer/hf_json.py", "Tokenizer: reading tokenizer.json"),
    ("tinyllama_ref/tokenizer/gguf_pretokenizers.py", "Tokenizer: llama.cpp's pre-tokenizers"),
    ("tinyllama_ref/tokenizer/gguf_vocab.py", "Tokenizer: vocabularies from GGUF files"),
    ("tinyllama_ref/tokenizer/loaders.py", "Tokenizer: loading any tokenizer file"),
    ("tinyllama_ref/tokenizer/hf_api.py", "Tokenizer: Hugging Face's API (its types, call steps, saving)"),
    ("tinyllama_ref/padding.py", "Padding and truncating rows of ids"),
    ("tinyllama_ref/formats/paths.py", "File formats: what a path holds"),
    ("tinyllama_ref/errors.py", "File formats: checkpoint errors"),
    ("tinyllama_ref/atomic.py", "File formats: files written whole or not at all"),
    ("tinyllama_ref/formats/safetensors.py", "File formats: safetensors"),
    ("tinyllama_ref/formats/checkpoint.py", "File formats: checkpoint directories and the parameter tree"),
    ("tinyllama_ref/formats/hf_writer.py", "File formats: writing a checkpoint directory"),
    ("tinyllama_ref/formats/gguf_file.py", "File formats: the GGUF container"),
    ("tinyllama_ref/formats/ggml_quants.py", "File formats: GGUF's quantized blocks"),
    ("tinyllama_ref/formats/qk_permutation.py", "File formats: the q/k permutation (RoPE layouts)"),
    ("tinyllama_ref/formats/gguf.py", "File formats: from GGUF to Hugging Face"),
    ("tinyllama_ref/formats/torch_pickle.py", "File formats: PyTorch .pth files without torch"),
    ("tinyllama_ref/formats/meta.py", "File formats: Meta's original checkpoints"),
    ("tinyllama_ref/formats/peft_lora.py", "File formats: PEFT's LoRA adapters"),
    ("tinyllama_ref/convert.py", "Converting to a Hugging Face checkpoint"),
    ("tinyllama_ref/fetch.py", "Fetching models"),
    ("tinyllama_ref/backend.py", "NumPy and CuPy"),
    ("tinyllama_ref/distributed.py", "Ranks: MPI and NCCL, and the slice each rank reads"),
    ("tinyllama_ref/parity.py", "The parity kit"),
    ("tinyllama_ref/golden_pack.py", "The conformance pack"),
    ("tinyllama_ref/conversation.py", "Chat"),
    ("tinyllama_ref/cli.py", "The command line"),
    # Volume 2: training. The backward of every function above, the optimiser, the loop, adapters.
    ("tinyllama_ref/backprop.py", "Backpropagation, by hand"),
    ("tinyllama_ref/optim.py", "The optimiser: AdamW, clipping, the schedule"),
    ("tinyllama_ref/train.py", "Training from scratch"),
    ("tinyllama_ref/lora.py", "LoRA adapters"),
]
VOLUME_2 = "tinyllama_ref/backprop.py"  # the first chapter of "Read the model, volume 2: backprop"

# Shown after a definition: (file, definition name) -> (asset, caption). An asset ending in .png is a
# figure drawn at build time (tools/docs_figures.py, the examples); any other name is the printed
# output of an example (see generate_assets).
FIGURES = {
    ("tinyllama_ref/llama.py", "repeat_kv"): (
        "gqa_head_sharing.png", "Grouped-query attention as `repeat_kv` assigns it: each key/value head serves a "
                                "group of query heads."),
    ("tinyllama_ref/llama.py", "attention_mask_bias"): (
        "causal_padding_mask.png", "The mask `attention_mask_bias` builds: causal, causal with left padding, and "
                                   "one decoding step with a cache."),
    ("tinyllama_ref/rope_scaling.py", "rope_inv_freq"): (
        "rope_variants.png", "Wavelength of every frequency pair, and how much each scaling type stretches it "
                             "(from `examples/rope_variants.py`)."),
    ("tinyllama_ref/llama.py", "apply_rope"): (
        "rope_rotation.png", "Queries and keys rotated by RoPE: the score q·k is the same for every pair of "
                             "positions with the same offset (drawn with `apply_rope`)."),
    ("tinyllama_ref/llama.py", "self_attention"): (
        "attention_map.png", "One head of the bundled model at work (from `examples/attention_map.py`)."),
    ("tinyllama_ref/tokenizer/tokenizer.py", "Tokenizer"): (
        "tokenizer_walkthrough", "What this code does to one sentence, step by step: the output of "
                                 "`examples/tokenizer_walkthrough.py` on the bundled model's tokenizer, "
                                 "recomputed when this page was built."),
}


# -- checking the plan against the package ------------------------------------------------------------

def needs_chapter(path: Path, repo: Path = REPO) -> bool:
    """Every .py file of the package, except an `__init__.py` that only re-exports (no definitions)."""
    return path.name != "__init__.py" or bool(module_items(path, repo))


def plan_problems(order=None, figures=None, repo: Path = REPO) -> list[str]:
    """What is wrong with READING_ORDER and FIGURES, as messages; [] when they match the package."""
    order = READING_ORDER if order is None else order
    figures = FIGURES if figures is None else figures
    problems = []
    listed = [path for path, _ in order]
    for path in sorted({p for p in listed if listed.count(p) > 1}):
        problems.append(f"READING_ORDER lists {path} more than once")
    for path in listed:
        if not (repo / path).is_file():
            problems.append(f"READING_ORDER lists {path}, which does not exist")
    for path in sorted((repo / "tinyllama_ref").rglob("*.py")):
        rel = path.relative_to(repo).as_posix()
        if rel not in listed and needs_chapter(path, repo):
            problems.append(f"{rel} has no chapter: add it to READING_ORDER")
    for (path, name), (asset, _) in figures.items():
        if path not in listed:
            problems.append(f"FIGURES places {asset} in {path}, which READING_ORDER does not list")
        elif (repo / path).is_file() and name not in {it.name for it in module_items(repo / path, repo)}:
            problems.append(f"FIGURES places {asset} after {path}:{name}, which is not a top-level definition there")
    return problems


def problem(message: str) -> None:
    """A plan that no longer matches the code: a warning, which fails `mkdocs build --strict`."""
    log.warning("docs/gen_pages.py: %s", message)


# -- pages ----------------------------------------------------------------------------------------------

def chapter_page(path: str) -> str:
    """tinyllama_ref/tokenizer/bpe.py -> tokenizer-bpe.md (stable while the reading order changes)."""
    parts = Path(path).with_suffix("").parts
    if parts[0] == "tinyllama_ref" and len(parts) > 1:
        parts = parts[1:]
    return "-".join(parts) + ".md"


def module_of(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def attachment(asset: str, caption: str, figures: dict, outputs: dict, unavailable: dict) -> str:
    if asset in figures:
        html_caption = re.sub(r"`([^`]+)`", r"<code>\1</code>", caption)
        alt = caption.replace("`", "")
        return (f'<figure markdown="span">\n![{alt}](../figures/{asset})\n'
                f"<figcaption>{html_caption}</figcaption>\n</figure>\n")
    if asset in outputs:
        return f'<div class="lp-output" markdown>\n\n{caption}\n\n```text\n{outputs[asset].rstrip()}\n```\n\n</div>\n'
    if asset in unavailable:
        log.info("gen_pages: no %s (%s)", asset, unavailable[asset])
    else:
        problem(f"FIGURES names {asset}, which generate_assets does not make")
    return ""


def render_chapter(number: int, path: str, title: str, figures: dict, outputs: dict, unavailable: dict) -> str:
    module = module_of(path)
    parts = ["---\nhide:\n  - navigation\n  - toc\n---\n",
             f"# {number}. {title}\n",
             f"`{path}` · [API reference](../reference/{module}.md) · [all chapters](index.md)\n"
             "{: .src-loc .chapter-loc }\n"]
    doc = module_docstring(REPO / path)
    if doc:
        parts.append(f'<div class="lp-intro" markdown>\n\n{docstring_to_markdown(doc)}\n</div>\n')
    for item in module_items(REPO / path, REPO):
        parts.append(render_item(item, REPO))
        if (path, item.name) in FIGURES:
            parts.append(attachment(*FIGURES[(path, item.name)], figures, outputs, unavailable))
    return "\n".join(parts)


def read_pages(figures: dict, outputs: dict, unavailable: dict) -> None:
    for message in plan_problems():
        problem(message)
    chapters = [(path, title) for path, title in READING_ORDER if (REPO / path).is_file()]
    summary = ["* [How to read this](index.md)"]
    index_lines = []
    for number, (path, title) in enumerate(chapters, 1):
        page = chapter_page(path)
        write(f"read/{page}", render_chapter(number, path, title, figures, outputs, unavailable))
        if path == VOLUME_2:  # volume 2 is a section of its own in the navigation and the index
            summary.append("* Read the model, volume 2: backprop")
            index_lines.append("\n## Read the model, volume 2: backprop\n\nTraining, in NumPy: the backward of every function of "
                               "volume 1, checked against torch autograd, then AdamW, the loop and LoRA adapters.\n")
        indent = "    " if number > 1 and any(p == VOLUME_2 for p, _ in chapters[:number]) else ""
        summary.append(f"{indent}* [{number}. {title}]({page})")
        index_lines.append(f"{number}. [{title}]({page}) · `{path}`")
    write("read/SUMMARY.md", "\n".join(summary) + "\n")
    model = REPO / "tinyllama_ref" / "llama.py"
    model_doc = ("The whole model, from the docstring of `tinyllama_ref/llama.py`:\n\n"
                 + docstring_to_markdown(module_docstring(model))) if model.is_file() else ""
    chapter_list = "\n".join(index_lines)
    write("read/index.md", f"""# Read the model

These chapters are the package's own source, one file per chapter, in the order a reader needs it:
the configuration, then `llama.py`, the whole model in one file, then the variants beside it, the
edge that runs them, generation, the tokenizer and the file formats.
Each definition is laid out side by side: on the left its prose (the comments and docstrings), on
the right the code it explains, with the file's real line numbers. Both are regenerated from
`tinyllama_ref/` every time the site is built, so they cannot drift from the code.

{model_doc}
{chapter_list}

Shapes follow one convention everywhere: b = batch, s = new tokens, t = all tokens attended to
(cache + new), h = query heads, g = key/value heads, d = head_dim, D = hidden_size,
F = intermediate_size, V = vocab_size.
""")


def write(path: str, text: str) -> None:
    import mkdocs_gen_files

    with mkdocs_gen_files.open(path, "w") as f:
        f.write(text)


def generate_assets() -> tuple[dict[str, bytes], dict[str, str], dict[str, str]]:
    """Every figure as PNG bytes, the examples' printed outputs, and why any is missing. Those that
    need the bundled model (the attention map, the tokenizer walk-through) are skipped while it is absent."""
    import docs_figures as F

    out, outputs, unavailable = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        F.causal_padding_mask(tmp / "causal_padding_mask.png")
        F.gqa_head_sharing(tmp / "gqa_head_sharing.png")
        F.rope_rotation(tmp / "rope_rotation.png")
        F.load_example("rope_variants").plot_rope_variants(tmp / "rope_variants.png")
        if F.SIDE_BY_SIDE.is_file():
            F.training_curves(tmp / "training_loss.png")
        else:
            unavailable["training_loss.png"] = f"{F.SIDE_BY_SIDE} is missing: tools/train_bundled_model.py --side-by-side"
        try:
            from tinyllama_ref.cli import CLIError, default_model_dir

            model_dir = default_model_dir()
        except CLIError as e:
            unavailable["attention_map.png"] = unavailable["tokenizer_walkthrough"] = str(e)
        else:
            import tinyllama_ref as tl
            from tinyllama_ref.tokenizer import load_tokenizer

            ex = F.load_example("attention_map")
            model, tok = tl.load(model_dir), load_tokenizer(model_dir)
            pieces, probs = ex.attention_probs(model, tok, "In the beginning God created the heaven and the earth.",
                                               layer=1, head=0)
            ex.plot_attention(pieces, probs, f"{model_dir.name}: layer 1, head 0", tmp / "attention_map.png")
            walk = F.load_example("tokenizer_walkthrough")
            outputs["tokenizer_walkthrough"] = "\n".join(walk.walkthrough(tok, walk.DEFAULT_TEXT))
        for png in sorted(tmp.glob("*.png")):
            out[png.name] = png.read_bytes()
    return out, outputs, unavailable


def copy_mathjax() -> None:
    """MathJax 3 (tex-chtml + its fonts) into the site, from the django-static-mathjax wheel: no CDN needed."""
    import mkdocs_gen_files

    spec = importlib.util.find_spec("mathjax")
    root = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5" if spec else None
    if root is None or not (root / "tex-chtml.js").is_file():
        problem("MathJax not found: pip install django-static-mathjax (part of the docs extra); "
                "math would not render")
        return
    files = [root / "tex-chtml.js"] + sorted((root / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    for f in files:
        with mkdocs_gen_files.open(f"assets/mathjax/{f.relative_to(root).as_posix()}", "wb") as out:
            out.write(f.read_bytes())


def module_path(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for candidate in (REPO / rel.with_suffix(".py"), REPO / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def all_modules() -> list[str]:
    """Every module of the package, by dotted name, sorted."""
    return [module_of(path.relative_to(REPO).as_posix()) for path in sorted(PACKAGE.rglob("*.py"))]


def reference_pages() -> None:
    """One API page per module, rendered by mkdocstrings from the docstrings."""
    lines = ["* [Overview](index.md)"]
    index = ["# API reference\n", "Generated by mkdocstrings from the docstrings of each module. For the code "
             "with its explanation in reading order, see [Read the model](../read/index.md).\n",
             "| module | what it holds |", "| --- | --- |"]
    for module in all_modules():
        page = f"{module}.md"
        write(f"reference/{page}", f"# `{module}`\n\n::: {module}\n")
        doc = module_docstring(module_path(module)) or ""
        summary = doc.strip().splitlines()[0] if doc.strip() else ""
        index.append(f"| [`{module}`]({page}) | {summary.replace('|', '/')} |")
        lines.append(f"* [{module}]({page})")
    write("reference/index.md", "\n".join(index) + "\n")
    write("reference/SUMMARY.md", "\n".join(lines) + "\n")


def main() -> None:
    import mkdocs_gen_files
    from mkdocs.structure.files import InclusionLevel

    start = time.perf_counter()
    copy_mathjax()
    figures, outputs, unavailable = generate_assets()
    for name, data in figures.items():
        with mkdocs_gen_files.open(f"figures/{name}", "wb") as f:
            f.write(data)
    read_pages(figures, outputs, unavailable)
    reference_pages()
    # The nav files are read by mkdocs-literate-nav; they are not pages of their own.
    files = mkdocs_gen_files.FilesEditor.current().files
    for nav_file in ("read/SUMMARY.md", "reference/SUMMARY.md"):
        files.get_file_from_path(nav_file).inclusion = InclusionLevel.EXCLUDED
    log.info("gen_pages: %d figures, %d chapters, %d modules in %.1fs", len(figures), len(READING_ORDER),
             len(all_modules()), time.perf_counter() - start)


if __name__ == "<run_path>":  # run by mkdocs-gen-files (runpy.run_path), not on import
    main()
