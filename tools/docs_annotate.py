"""Turn the package's own source files into annotated Markdown pages (the "Read the model" chapters).

The docs never keep a copy of the code: at build time `docs/gen_pages.py` parses each module with
`ast`, and for every top-level definition writes its docstring as prose (math left in $...$ for
MathJax), the comment lines just above it as prose too, then its source as a code block numbered
with the file's real line numbers. A chapter lists the definitions in the order a reader needs;
whatever a chapter does not name is still published, in file order, in an appendix, so a new
function can never be missing from the site.

    >>> items = module_items(Path("tinyllama_ref/layers.py"))      # doctest: +SKIP
    >>> [it.name for it in items][:3]                              # doctest: +SKIP
    ['F32', 'linear', 'linear_tp']
"""
from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

# A section divider such as "# -- the KV cache -----": structure for the file, not prose for the reader.
_DIVIDER = re.compile(r"^#\s*-{2,}.*-{3,}\s*$|^#\s*-{5,}")
_DOCTEST_DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")
# Spans that Markdown must leave alone: code spans, display math, inline math.
_PROTECTED = re.compile(r"(`+)(?:.+?)\1|\$\$.+?\$\$|(?<![\\$\w])\$(?=\S)[^$\n]+?(?<=\S)\$(?![\w$])", re.S)


@dataclass
class Item:
    """One top-level statement worth showing: a def, a class, or a run of assignments."""

    name: str  # the defined name ("rms_norm"), or the first assigned name for a run of constants
    kind: str  # "function", "class" or "constant"
    module: str  # dotted module name, "tinyllama_ref.layers"
    path: Path
    first: int  # first source line (decorators included), 1-based
    last: int  # last source line
    docstring: str | None
    doc_lines: tuple[int, int] | None  # the docstring's own lines, left out of the code block
    comments: str  # the comment block right above, as prose ("" when none)
    source_lines: list[str]
    alias: bool = False  # a one-line `F32 = np.float32`: a shorthand, not something to read about


def _comment_block_above(lines: list[str], first: int, floor: int) -> str:
    """The contiguous `#` lines directly above line `first` (1-based), not reaching `floor`, as prose."""
    out = []
    i = first - 2
    while i >= floor and lines[i].lstrip().startswith("#") and not lines[i].startswith((" ", "\t")):
        out.append(lines[i])
        i -= 1
    out.reverse()
    prose = [re.sub(r"^#\s?", "", line) for line in out if not _DIVIDER.match(line.strip())]
    return " ".join(p.strip() for p in prose if p.strip())


def _docstring_node(node) -> ast.Expr | None:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0]
    return None


def _assigned_names(node) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    names = []
    for t in targets:
        for n in ast.walk(t):
            if isinstance(n, ast.Name):
                names.append(n.id)
    return names


def module_name(path: Path, root: Path) -> str:
    """tinyllama_ref/tokenizer/bpe.py -> "tinyllama_ref.tokenizer.bpe" (relative to the repo root)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_docstring(path: Path) -> str | None:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))


def module_items(path: Path, root: Path | None = None) -> list[Item]:
    """Every def, class and module-level constant of one file, in file order.

    Consecutive assignments (a block of constants) form one item; imports, `__all__`, the module
    docstring and `if __name__ == "__main__"` are left out.
    """
    root = root or path.parent.parent
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    modname = module_name(path, root) if root in path.parents else path.stem
    items: list[Item] = []
    prev_end = 0
    pending: list[ast.stmt] = []

    def flush_constants():
        nonlocal pending
        if not pending:
            return
        first = pending[0].lineno
        last = pending[-1].end_lineno
        names = [n for node in pending for n in _assigned_names(node)]
        comments = _comment_block_above(lines, first, pending_floor)
        alias = len(pending) == 1 and isinstance(pending[0].value, (ast.Name, ast.Attribute)) and not comments
        items.append(Item(name=names[0] if names else "constants", kind="constant", module=modname, path=path,
                          first=first, last=last, docstring=None, doc_lines=None, comments=comments,
                          source_lines=lines[first - 1:last], alias=alias))
        pending = []

    pending_floor = 0
    for node in tree.body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            names = _assigned_names(node)
            if names in (["__all__"], ["__version__"]):
                flush_constants()
                prev_end = node.end_lineno
                continue
            # A blank line or a comment between two assignments starts a new block.
            if pending and (start - pending[-1].end_lineno > 1):
                flush_constants()
            if not pending:
                pending_floor = prev_end
            pending.append(node)
            prev_end = node.end_lineno
            continue
        flush_constants()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = _docstring_node(node)
            items.append(Item(
                name=node.name, kind="class" if isinstance(node, ast.ClassDef) else "function", module=modname,
                path=path, first=start, last=node.end_lineno,
                docstring=inspect.cleandoc(doc.value.value) if doc else None,
                doc_lines=(doc.lineno, doc.end_lineno) if doc else None,
                comments=_comment_block_above(lines, start, prev_end),
                source_lines=lines[start - 1:node.end_lineno]))
        prev_end = node.end_lineno
    flush_constants()
    return items


def code_without_docstring(item: Item) -> tuple[list[str], list[int]]:
    """The item's source lines with its docstring removed, and each kept line's real line number."""
    kept, numbers = [], []
    for offset, line in enumerate(item.source_lines):
        n = item.first + offset
        if item.doc_lines and item.doc_lines[0] <= n <= item.doc_lines[1]:
            continue
        kept.append(line)
        numbers.append(n)
    return kept, numbers


def _escape_markdown(text: str) -> str:
    """Escape what Markdown would misread in plain prose: raw HTML (`<s>`), `*`/`_` emphasis, `$VAR`."""
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    text = re.sub(r"(?<!^)(?<!\n)(?<![ \t])\*|(?<=\S)\*|\*(?=\S)", r"\\*", text)
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
    text = re.sub(r"\$(?=[A-Z_]{2,})", r"\\$", text)  # an environment variable, not math
    return text


def escape_prose(text: str) -> str:
    """Escape Markdown-special characters outside code spans and math (those must stay verbatim).

    >>> escape_prose('strips "<s>" but keeps `<s>` and $a*b$; h*d')
    'strips "&lt;s>" but keeps `<s>` and $a*b$; h\\\\*d'
    """
    out, pos = [], 0
    for m in _PROTECTED.finditer(text):
        out.append(_escape_markdown(text[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_escape_markdown(text[pos:]))
    return "".join(out)


def docstring_to_markdown(doc: str) -> str:
    r"""A docstring as Markdown: doctest examples become `pycon` code blocks, indented blocks stay code,
    and everything else is prose with Markdown's special characters escaped.

    >>> docstring_to_markdown("Shapes:\n\n    [b, s] -> [b, s, D]").splitlines()
    ['Shapes:', '', '```text', '[b, s] -> [b, s, D]', '```']
    """
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = len(line) - len(line.lstrip())
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(_DOCTEST_DIRECTIVE.sub("", lines[i][indent:]))
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += ["```pycon", *block, "```", ""]
            continue
        if line.count("$$") == 1:
            # Display math over several lines: pass it through untouched, up to the closing $$.
            block = [line]
            i += 1
            while i < len(lines) and "$$" not in lines[i]:
                block.append(lines[i])
                i += 1
            if i < len(lines):
                block.append(lines[i])
                i += 1
            out += block
            continue
        if line.startswith(("    ", "\t")) and (not out or not out[-1].strip()):
            # An indented block after a blank line: keep it verbatim as a code block.
            block = []
            while i < len(lines) and (lines[i].startswith(("    ", "\t")) or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["```text", *[b[4:] if b.startswith("    ") else b for b in block], "```", ""]
            continue
        out.append(escape_prose(line))
        i += 1
    return "\n".join(out).rstrip() + "\n"


def code_block(lines: list[str], first_line: int, classes: str = "") -> str:
    """A fenced Python block whose line numbers are the file's own (pymdownx.highlight `linenums`)."""
    cls = "".join(f" .{c}" for c in classes.split())
    return f'```{{.python{cls} linenums="{first_line}"}}\n' + "\n".join(lines) + "\n```\n"


def render_item(item: Item, repo_root: Path, heading_level: int = 3) -> str:
    """One definition as Markdown: heading, where it lives, comment prose, docstring prose, code."""
    rel = item.path.relative_to(repo_root).as_posix()
    label = {"function": "", "class": "class ", "constant": ""}[item.kind]
    title = f"{label}`{item.name}`"
    anchor = f"{item.module}.{item.name}".replace(".", "-").lower()
    parts = [f"{'#' * heading_level} {title} {{#{anchor}}}\n"]
    where = f"line {item.first}" if item.first == item.last else f"lines {item.first}–{item.last}"
    parts.append(f'<p class="src-loc"><code>{rel}</code>, {where}</p>\n')
    if item.comments:
        parts.append(escape_prose(item.comments) + "\n")
    if item.docstring:
        parts.append(docstring_to_markdown(item.docstring))
    lines, numbers = code_without_docstring(item)
    # Where the docstring was cut out the block is split, so every line keeps its real number;
    # the pieces are drawn as one block (docs/stylesheets/extra.css joins them).
    chunks, start = [], 0
    for j in range(1, len(numbers) + 1):
        if j == len(numbers) or numbers[j] != numbers[j - 1] + 1:
            chunks.append((lines[start:j], numbers[start]))
            start = j
    for k, (chunk_lines, first) in enumerate(chunks):
        classes = ("joined-top" if k + 1 < len(chunks) else "") + (" joined-bottom" if k else "")
        parts.append(code_block(chunk_lines, first, classes.strip()))
    return "\n".join(parts) + "\n"
