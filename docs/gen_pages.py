"""Build-time generator (mkdocs-gen-files): the "Read the model" chapters, the API reference, the figures.

Nothing here copies the package's source: every chapter is rebuilt from tinyllama_ref/*.py on each
`mkdocs build`, by tools/docs_annotate.py. READING_PLAN below only says in which order a reader
meets the definitions. A name it lists that no longer exists fails the (strict) build with a
message saying so; a definition it does not list still appears, in a last chapter
("Everything else", written only when there is something to put in it), so the site is never
missing code. One-line aliases such as `F32 = np.float32` are the only thing left out of it.
"""
from __future__ import annotations

import importlib.util
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import mkdocs_gen_files

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "tools"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from docs_annotate import docstring_to_markdown, module_docstring, module_items, render_item  # noqa: E402

log = logging.getLogger("mkdocs.plugins.gen_pages")
PACKAGE = REPO / "tinyllama_ref"


# -- the reading plan --------------------------------------------------------------------------
# Entries: ("doc", module) the module's docstring; ("defs", module, *names) those definitions;
# ("rest", module) whatever the plan names nowhere else in that module, in file order;
# ("figure", file, caption); ("output", name, caption) text an example printed; ("text", markdown). A module entry ending in "?" is skipped when the
# module does not exist (yet).

L, M, R = "tinyllama_ref.layers", "tinyllama_ref.model", "tinyllama_ref.rope"
TOK = "tinyllama_ref.tokenizer."

READING_PLAN = [
    ("01-config.md", "1. The configuration", [
        ("text", "Everything the model needs to know about its shape comes from `config.json`, read into one "
                 "flat dataclass. Read this first: every later chapter refers to these fields."),
        ("doc", "tinyllama_ref.config"), ("rest", "tinyllama_ref.config")]),
    ("02-embedding.md", "2. Token embedding", [
        ("doc", L),
        ("text", "## Looking up token vectors"),
        ("defs", L, "embed"), ("defs", M, "embed_tokens"),
        ("text", "## Open-Llama's stable embedding"),
        ("defs", L, "layer_norm")]),
    ("03-rmsnorm.md", "3. RMSNorm", [
        ("text", "Every sub-block of a LLaMA layer starts by normalising its input, and the final hidden "
                 "state is normalised once more before the output head."),
        ("defs", L, "rms_norm")]),
    ("04-rope.md", "4. Rotary position embedding (RoPE) and its six variants", [
        ("doc", R),
        ("figure", "rope_rotation.png", "Queries and keys rotated by RoPE: the score q·k is the same for every pair "
                                        "of positions with the same offset (drawn with `apply_rope`)."),
        ("text", "## The original frequencies"),
        ("defs", R, "_exponents", "_base_inv_freq", "default_inv_freq"),
        ("text", "## The scaling variants"),
        ("figure", "rope_variants.png", "Wavelength of every frequency pair, and how much each scaling type "
                                        "stretches it (from `examples/rope_variants.py`)."),
        ("defs", R, "linear_inv_freq", "dynamic_inv_freq", "yarn_inv_freq", "longrope_inv_freq",
         "llama3_inv_freq", "ROPE_INIT_FUNCTIONS", "rope_inv_freq"),
        ("text", "## Rotating queries and keys"),
        ("defs", R, "rope_cos_sin", "rotate_half", "apply_rope")]),
    ("05-attention.md", "5. Attention: heads, masks, GQA and the KV cache", [
        ("text", "## Projections and heads"),
        ("defs", L, "linear", "linear_tp", "split_heads", "merge_heads"),
        ("text", "## Scaled dot-product attention"),
        ("defs", L, "softmax", "attention_mask_bias"),
        ("figure", "causal_padding_mask.png", "The mask `attention_mask_bias` builds: causal, causal with left "
                                              "padding, and one decoding step with a cache."),
        ("defs", L, "repeat_kv"),
        ("figure", "gqa_head_sharing.png", "Grouped-query attention as `repeat_kv` assigns it: each key/value "
                                           "head serves a group of query heads."),
        ("defs", L, "scaled_dot_product_attention"),
        ("text", "## The KV cache"),
        ("defs", M, "KVCache", "cache_signature", "_grow", "cache_update"),
        ("text", "## The attention block"),
        ("defs", L, "tap"), ("defs", M, "self_attention"),
        ("figure", "attention_map.png?", "One head of the bundled model at work (from `examples/attention_map.py`)."),
    ]),
    ("06-swiglu.md", "6. The SwiGLU feed-forward block", [
        ("defs", L, "activation", "_erf", "swiglu_mlp")]),
    ("07-decoder-layer.md", "7. The decoder layer", [
        ("doc", M),
        ("defs", M, "decoder_layer")]),
    ("08-heads.md", "8. The forward pass and its heads", [
        ("text", "The layers stacked, a final RMSNorm, and one of three heads: next-token logits "
                 "(`LlamaForCausalLM`), a class score read at the last real token "
                 "(`LlamaForSequenceClassification`), or the hidden states alone (`LlamaModel`)."),
        ("defs", M, "InputError", "ModelOutput", "check_inputs", "forward", "_keep_positions", "_last_non_pad")]),
    ("09-loss.md", "9. The loss", [
        ("defs", M, "cross_entropy", "causal_lm_loss", "classification_loss")]),
    ("10-generation.md", "10. Generation", [
        ("doc", "tinyllama_ref.generation"), ("rest", "tinyllama_ref.generation")]),
    ("11-tokenizer.md", "11. The tokenizer", [
        ("output", "tokenizer_walkthrough?", "What the code below does to one sentence, step by step: the output of "
                                             "`examples/tokenizer_walkthrough.py` on the bundled model's tokenizer, "
                                             "recomputed when this page was built."),
        ("doc", TOK + "tokenizer"),
        ("text", "## Normalization"), ("doc", TOK + "sp_normalizer"), ("rest", TOK + "sp_normalizer"),
        ("text", "## SentencePiece BPE"), ("doc", TOK + "sp_model"), ("rest", TOK + "sp_model"),
        ("text", "## The merge loop"), ("doc", TOK + "bpe"), ("rest", TOK + "bpe"),
        ("text", "## The Tokenizer object and its loaders"), ("rest", TOK + "tokenizer"),
        ("doc", TOK + "loaders?"), ("rest", TOK + "loaders?"),
        ("text", "## Reading `tokenizer.model`: protobuf"), ("doc", TOK + "protobuf"), ("rest", TOK + "protobuf"),
        ("text", "## Byte-level BPE and `tokenizer.json`"), ("doc", TOK + "hf_bpe?"), ("rest", TOK + "hf_bpe?"),
        ("doc", TOK + "hf_json?"), ("rest", TOK + "hf_json?"),
        ("text", "## Vocabularies from GGUF files"), ("doc", TOK + "gguf_vocab?"), ("rest", TOK + "gguf_vocab?")]),
    ("a1-weights.md", "A. Loading checkpoints", [
        ("doc", "tinyllama_ref.formats?"),
        ("text", "## safetensors files"), ("doc", "tinyllama_ref.formats.safetensors"),
        ("rest", "tinyllama_ref.formats.safetensors"),
        ("text", "## Checkpoint directories and the parameter tree"), ("doc", "tinyllama_ref.formats.checkpoint"),
        ("rest", "tinyllama_ref.formats.checkpoint"),
        ("text", "## The Model object and `load`"),
        ("defs", M, "Model", "build_model", "load", "_progress_bar"),
        ("text", "## GGUF files"), ("doc", "tinyllama_ref.formats.gguf_file?"),
        ("rest", "tinyllama_ref.formats.gguf_file?"),
        ("text", "### From GGUF to Hugging Face"), ("doc", "tinyllama_ref.formats.gguf?"),
        ("rest", "tinyllama_ref.formats.gguf?"),
        ("text", "### llama.cpp's pre-tokenizers"), ("doc", "tinyllama_ref.formats.gguf_pretokenizers?"),
        ("rest", "tinyllama_ref.formats.gguf_pretokenizers?"),
        ("text", "## Fetching models"), ("doc", "tinyllama_ref.fetch?"), ("rest", "tinyllama_ref.fetch?")]),
    ("a2-backend.md", "B. NumPy and CuPy", [
        ("doc", "tinyllama_ref.backend"), ("rest", "tinyllama_ref.backend")]),
    ("a3-parity.md", "C. The parity kit", [
        ("doc", "tinyllama_ref.parity"), ("rest", "tinyllama_ref.parity")]),
    ("a4-cli.md", "D. The command line and chat", [
        ("doc", "tinyllama_ref.cli"), ("rest", "tinyllama_ref.cli"),
        ("text", "## Chat"), ("doc", "tinyllama_ref.conversation?"),
        ("rest", "tinyllama_ref.conversation?")]),
]
OTHERS_PAGE = ("a9-everything-else.md", "E. Everything else")


# -- modules and their definitions ---------------------------------------------------------------

def module_path(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for candidate in (REPO / rel.with_suffix(".py"), REPO / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def all_modules() -> list[str]:
    """Every module of the package, by dotted name, sorted."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


_ITEMS: dict[str, list] = {}


def items_of(module: str) -> list:
    if module not in _ITEMS:
        path = module_path(module)
        _ITEMS[module] = module_items(path, REPO) if path else []
    return _ITEMS[module]


def _optional(module: str) -> tuple[str, bool]:
    return (module[:-1], True) if module.endswith("?") else (module, False)


def problem(message: str) -> None:
    """A plan that no longer matches the code: a warning, which fails `mkdocs build --strict`."""
    log.warning("docs/gen_pages.py: %s", message)


# -- pages ---------------------------------------------------------------------------------------

def render_chapter(title: str, entries: list, named: set, rendered: set, figures: dict, outputs: dict,
                   catch_all: bool = False) -> str:
    parts = [f"# {title}\n"]
    for entry in entries:
        kind = entry[0]
        if kind == "text":
            parts.append(entry[1] + "\n")
        elif kind == "figure":
            name, optional = _optional(entry[1])
            if name in figures:
                caption = re.sub(r"`([^`]+)`", r"<code>\1</code>", entry[2])
                alt = entry[2].replace("`", "")
                parts.append(f'<figure markdown="span">\n![{alt}](../figures/{name})\n'
                             f"<figcaption>{caption}</figcaption>\n</figure>\n")
            elif not optional:
                problem(f"figure {name} was not generated")
        elif kind == "output":
            name, optional = _optional(entry[1])
            if name in outputs:
                parts.append(f'{entry[2]}\n\n```text\n{outputs[name].rstrip()}\n```\n')
            elif not optional:
                problem(f"output {name} was not generated")
        elif kind == "doc":
            module, optional = _optional(entry[1])
            path = module_path(module)
            if path is None:
                if not optional:
                    problem(f"the reading plan names module {module}, which does not exist")
                continue
            doc = module_docstring(path)
            if doc:
                rel = path.relative_to(REPO).as_posix()
                parts.append(f'<p class="src-loc">From the docstring of <code>{rel}</code></p>\n')
                parts.append(docstring_to_markdown(doc))
        elif kind == "defs":
            module, names = entry[1], entry[2:]
            by_name = {it.name: it for it in items_of(module)}
            for name in names:
                item = by_name.get(name)
                if item is None:
                    problem(f"the reading plan names {module}.{name}, which no longer exists: update READING_PLAN")
                    continue
                parts.append(render_item(item, REPO))
                rendered.add((module, name))
        elif kind == "rest":
            module, optional = _optional(entry[1])
            if module_path(module) is None:
                if not optional:
                    problem(f"the reading plan names module {module}, which does not exist")
                continue
            for item in items_of(module):
                if item.alias and catch_all:
                    continue
                if (module, item.name) not in named and (module, item.name) not in rendered:
                    parts.append(render_item(item, REPO))
                    rendered.add((module, item.name))
    return "\n".join(parts)


def write(path: str, text: str) -> None:
    with mkdocs_gen_files.open(path, "w") as f:
        f.write(text)


def generate_assets() -> tuple[dict[str, bytes], dict[str, str]]:
    """Every figure as PNG bytes, and the examples' printed outputs. Those that need the bundled model
    (the attention map, the tokenizer walk-through) are skipped, with a note, while it is absent."""
    import docs_figures as F

    out, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        F.causal_padding_mask(tmp / "causal_padding_mask.png")
        F.gqa_head_sharing(tmp / "gqa_head_sharing.png")
        F.rope_rotation(tmp / "rope_rotation.png")
        F.load_example("rope_variants").plot_rope_variants(tmp / "rope_variants.png")
        try:
            from tinyllama_ref.cli import CLIError, default_model_dir

            model_dir = default_model_dir()
        except CLIError as e:
            log.info("gen_pages: no attention-map figure (%s)", e)
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
    return out, outputs


def copy_mathjax() -> None:
    """MathJax 3 (tex-chtml + its fonts) into the site, from the django-static-mathjax wheel: no CDN needed."""
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


def read_pages(figures: dict, outputs: dict) -> None:
    named = {(e[1], n) for _, _, entries in READING_PLAN for e in entries if e[0] == "defs" for n in e[2:]}
    rendered: set = set()
    summary = ["* [How to read this](index.md)"]
    for filename, title, entries in READING_PLAN:
        write(f"read/{filename}", render_chapter(title, entries, named, rendered, figures, outputs))
        summary.append(f"* [{title}]({filename})")
    # Whatever the plan does not place, so that no definition is missing from the site.
    rest = [("text", "Definitions that the chapters above do not place yet, module by module, in file order.")]
    for module in all_modules():
        left = [it for it in items_of(module) if (module, it.name) not in rendered and not it.alias]
        if left:
            rest += [("text", f"## `{module}`"), ("rest", module)]
    if len(rest) > 1:
        write(f"read/{OTHERS_PAGE[0]}", render_chapter(OTHERS_PAGE[1], rest, named, rendered, figures, outputs,
                                                                 catch_all=True))
        summary.append(f"* [{OTHERS_PAGE[1]}]({OTHERS_PAGE[0]})")
    write("read/SUMMARY.md", "\n".join(summary) + "\n")
    chapters = "\n".join(f"- [{title}]({filename})" for filename, title, _ in READING_PLAN)
    model_doc = docstring_to_markdown(module_docstring(module_path(M)))
    write("read/index.md", f"""# Read the model

These chapters are the package's own source, in the order a reader needs it: from the configuration,
through one decoder layer, to the heads, the loss, generation and the tokenizer. The prose is the
code's docstrings and comments; the code blocks carry the file's real line numbers. Both are
regenerated from `tinyllama_ref/` every time the site is built, so they cannot drift from the code.

The whole model, from the docstring of `tinyllama_ref/model.py`:

{model_doc}
{chapters}

Shapes follow one convention everywhere: b = batch, s = new tokens, t = all tokens attended to
(cache + new), h = query heads, g = key/value heads, d = head_dim, D = hidden_size,
F = intermediate_size, V = vocab_size.
""")


def main() -> None:
    start = time.perf_counter()
    copy_mathjax()
    figures, outputs = generate_assets()
    for name, data in figures.items():
        with mkdocs_gen_files.open(f"figures/{name}", "wb") as f:
            f.write(data)
    read_pages(figures, outputs)
    reference_pages()
    # The nav files are read by mkdocs-literate-nav; they are not pages of their own.
    from mkdocs.structure.files import InclusionLevel

    files = mkdocs_gen_files.FilesEditor.current().files
    for nav_file in ("read/SUMMARY.md", "reference/SUMMARY.md"):
        files.get_file_from_path(nav_file).inclusion = InclusionLevel.EXCLUDED
    log.info("gen_pages: %d figures, %d modules in %.1fs", len(figures), len(all_modules()),
             time.perf_counter() - start)


main()
