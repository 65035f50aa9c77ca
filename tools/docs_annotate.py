"""Turn the package's own source files into annotated pages (the "Read the model" chapters).

The docs never keep a copy of the code: at build time `docs/gen_pages.py` parses each file with
`ast` and `tokenize`, and lays every top-level definition out side by side, as Docco/Pycco and
labml.ai's annotated papers do: prose on the left, the code it explains on the right.

* The first section's prose is the comment block right above the definition, then its docstring
  (rendered as Markdown, math left in $...$ for MathJax); its code starts at the `def`/`class` line.
* Inside the definition, a run of full-line `#` comments starts a new section: the comment moves to
  the left, level with the code lines that follow it. A nested function or method with a docstring
  starts a section too, its docstring on the left. Trailing comments stay in the code.
* Docstrings are cut out of the code; every code line keeps the file's real line number.

All sections of one definition form one grid (`<div class="lp">`): the code cells stack into one
continuous block (docs/stylesheets/extra.css).

    >>> items = module_items(Path("tinyllama_ref/layers.py"))      # doctest: +SKIP
    >>> [it.name for it in items][:3]                              # doctest: +SKIP
    ['F32', 'linear', 'linear_tp']
"""
from __future__ import annotations

import ast
import html
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

# A section divider such as "# -- the KV cache -----": structure for the file, not prose for the reader.
_DIVIDER = re.compile(r"^#\s*-{2,}.*-{3,}\s*$|^#\s*-{5,}")
_DIVIDER_LABEL = re.compile(r"^#\s*-+\s*(.*?)\s*-*\s*$")
# Comments addressed to tools, not readers: they stay in the code.
_PRAGMA = re.compile(r"^#\s*(noqa|type:|pragma|fmt:|pylint:|isort:|ruff:)")
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
    doc_lines: tuple[int, int] | None  # the docstring's own lines, left out of the code
    comments: str  # the comment block right above, as Markdown prose ("" when none)
    source_lines: list[str]
    alias: bool = False  # a one-line `F32 = np.float32`: a shorthand, not something to read about
    # Nested functions/classes (methods) with a docstring: (first line incl. decorators, docstring
    # first line, docstring last line, docstring). Each starts a section; its docstring goes left.
    nested_docs: list[tuple[int, int, int, str]] = field(default_factory=list)


@dataclass
class Section:
    """One row of the side-by-side layout: Markdown prose, and the code lines (by number) it explains."""

    prose: list[str]
    lines: list[int]


def _comment_prose(comment_lines: list[str]) -> str:
    """`#` lines as Markdown prose: one paragraph per run of text, a divider as a small label."""
    paragraphs: list[list[str]] = [[]]
    labels = []
    for raw in comment_lines:
        line = raw.strip()
        if _DIVIDER.match(line):
            label = _DIVIDER_LABEL.match(line).group(1).strip("- ")
            if label:
                labels.append(label)
            continue
        text = re.sub(r"^#+\s?", "", line).strip()
        if text:
            paragraphs[-1].append(text)
        elif paragraphs[-1]:
            paragraphs.append([])
    out = [f"{escape_prose(label)}\n{{: .lp-label }}" for label in labels]
    out += [escape_prose(" ".join(p)) for p in paragraphs if p]
    return "\n\n".join(out)


def _comment_block_above(lines: list[str], first: int, floor: int) -> str:
    """The contiguous `#` lines directly above line `first` (1-based), not reaching `floor`, as prose.
    Section dividers ("# -- outputs ----") are structure for the file and are left out."""
    out = []
    i = first - 2
    while i >= floor and lines[i].lstrip().startswith("#") and not lines[i].startswith((" ", "\t")):
        out.append(lines[i])
        i -= 1
    out.reverse()
    return _comment_prose([line for line in out if not _DIVIDER.match(line.strip())])


def _docstring_node(node) -> ast.Expr | None:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0]
    return None


def _own_lines(doc: ast.Expr, lines: list[str]) -> bool:
    """True when the docstring has its lines to itself (so cutting them out leaves valid code)."""
    before = lines[doc.lineno - 1][:doc.col_offset]
    after = lines[doc.end_lineno - 1][doc.end_col_offset:]
    return not before.strip() and (not after.strip() or after.strip().startswith("#"))


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


def clean_docstring(raw: str, indent: int) -> str:
    r"""A docstring's text with the code's indentation (`indent` columns) taken off every line but the first.

    Unlike `inspect.cleandoc`, an indented block keeps its indentation when nothing else follows the
    summary line, so it still reads as a code block:

    >>> clean_docstring("Summary.\n\n        [b, s] -> [b, s, D]\n    ", 4)
    'Summary.\n\n    [b, s] -> [b, s, D]'
    """
    lines = raw.expandtabs().splitlines()
    out = [lines[0].strip()] if lines else []
    for line in lines[1:]:
        margin = len(line) - len(line.lstrip(" "))
        out.append(line[min(margin, indent):].rstrip())
    while out and not out[-1]:
        out.pop()
    while out and not out[0]:
        out.pop(0)
    return "\n".join(out)


def module_docstring(path: Path) -> str | None:
    doc = _docstring_node(ast.parse(path.read_text(encoding="utf-8")))
    return clean_docstring(doc.value.value, 0) if doc else None


def _nested_docs(node, lines: list[str]) -> list[tuple[int, int, int, str]]:
    found = []
    for sub in ast.walk(node):
        if sub is node or not isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        doc = _docstring_node(sub)
        if doc is not None and _own_lines(doc, lines):
            start = min([sub.lineno] + [d.lineno for d in sub.decorator_list])
            found.append((start, doc.lineno, doc.end_lineno, clean_docstring(doc.value.value, doc.col_offset)))
    return sorted(found)


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
                docstring=clean_docstring(doc.value.value, doc.col_offset) if doc else None,
                doc_lines=(doc.lineno, doc.end_lineno) if doc and _own_lines(doc, lines) else None,
                comments=_comment_block_above(lines, start, prev_end),
                source_lines=lines[start - 1:node.end_lineno],
                nested_docs=_nested_docs(node, lines)))
        prev_end = node.end_lineno
    flush_constants()
    return items


# -- Markdown prose --------------------------------------------------------------------------------

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


# -- sections and code -----------------------------------------------------------------------------

def _full_line_comments(item: Item) -> dict[int, str]:
    """Line number -> text of every comment that has its line to itself (found by `tokenize`, so a
    `#` inside a string is never mistaken for one). Pragmas (`# noqa`, `# type:`) stay code."""
    found = {}
    src = "\n".join(item.source_lines) + "\n"
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                row, col = tok.start
                if not item.source_lines[row - 1][:col].strip() and not _PRAGMA.match(tok.string):
                    found[item.first + row - 1] = tok.string
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return {}
    return found


def _cut_lines(item: Item) -> tuple[set[int], dict[int, str]]:
    """The lines that leave the code column (docstrings, full-line comments), and the comments."""
    removed: set[int] = set()
    if item.doc_lines:
        removed.update(range(item.doc_lines[0], item.doc_lines[1] + 1))
    for _, d0, d1, _ in item.nested_docs:
        removed.update(range(d0, d1 + 1))
    comments = _full_line_comments(item)
    removed.update(comments)
    return removed, comments


def sections(item: Item) -> list[Section]:
    """Split a definition into side-by-side sections (see the module docstring for the rules).

    Blank lines at either end of a section are dropped; every other line keeps its number.
    """
    lines = {item.first + k: text for k, text in enumerate(item.source_lines)}
    removed, comments = _cut_lines(item)
    docs = removed - set(comments)

    def next_code_line(after: int) -> int:
        n = after + 1
        while n <= item.last and (n in removed or not lines[n].strip()):
            n += 1
        return n  # item.last + 1 when nothing follows

    starts: dict[int, list[str]] = {}
    run: list[int] = []
    for n in sorted(comments) + [None]:
        if run and (n is None or n != run[-1] + 1):
            prose = _comment_prose([comments[k] for k in run])
            starts.setdefault(next_code_line(run[-1]), []).append(prose)
            run = []
        if n is not None:
            run.append(n)
    for start, _, _, doc in item.nested_docs:
        starts.setdefault(start, []).append(docstring_to_markdown(doc))

    first_prose = [p for p in (item.comments, docstring_to_markdown(item.docstring) if item.docstring else "") if p]
    secs = [Section(prose=first_prose, lines=[])]
    for n in range(item.first, item.last + 1):
        if n in removed or (not lines[n].strip() and n - 1 in docs):  # the blank line after a docstring
            continue
        if n in starts:
            if secs[-1].lines:
                secs.append(Section(prose=[], lines=[]))
            secs[-1].prose += starts[n]
        secs[-1].lines.append(n)
    if item.last + 1 in starts:  # comments after the last line of code
        secs.append(Section(prose=starts[item.last + 1], lines=[]))
    for sec in secs:
        while sec.lines and not lines[sec.lines[0]].strip():
            sec.lines.pop(0)
        while sec.lines and not lines[sec.lines[-1]].strip():
            sec.lines.pop()
        sec.prose = [p for p in (p.strip() for p in sec.prose) if p]
    return secs


def highlight_lines(item: Item) -> dict[int, str]:
    """Line number -> that line highlighted by Pygments (Material's `.highlight` token classes), for the
    item's code with docstrings and full-line comments cut out. The whole definition is lexed at once,
    so strings and brackets that span lines are coloured correctly."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    removed, _ = _cut_lines(item)
    kept = [n for n in range(item.first, item.last + 1) if n not in removed]
    text = "\n".join(item.source_lines[n - item.first] for n in kept) + "\n"
    out = highlight(text, PythonLexer(stripnl=False, ensurenl=True, tabsize=4), HtmlFormatter(nowrap=True))
    rendered = out.split("\n")
    if len(rendered) - 1 != len(kept):  # never expected; fall back to plain escaped text
        rendered = [html.escape(item.source_lines[n - item.first], quote=False) for n in kept] + [""]
    return dict(zip(kept, rendered))


def _code_line(number: int, source: str, highlighted: str) -> str:
    indent = len(source) - len(source.lstrip(" "))
    style = f' style="--in:{indent}"' if indent else ""
    return f'<span class="lp-l" data-ln="{number}"{style}>{highlighted}\n</span>'


def item_anchor(item: Item) -> str:
    """The heading id of a definition: tinyllama_ref.layers.rms_norm -> tinyllama_ref-layers-rms_norm."""
    return f"{item.module}.{item.name}".replace(".", "-").lower()


def render_sections(item: Item) -> str:
    """The side-by-side grid of one definition (raw HTML; the prose cells are Markdown, md_in_html)."""
    secs = sections(item)
    hl = highlight_lines(item)
    out = [f'<div class="lp" data-def="{html.escape(item.module + "." + item.name)}" markdown>']
    for sec in secs:
        out.append('<div class="lp-sec" markdown>')
        if sec.prose:
            out.append('<div class="lp-prose" markdown>\n\n' + "\n\n".join(sec.prose) + "\n\n</div>")
        else:
            out.append('<div class="lp-prose"></div>')
        code = "".join(_code_line(n, item.source_lines[n - item.first], hl.get(n, "")) for n in sec.lines)
        out.append(f'<div class="lp-code no-copy"><div class="highlight"><pre><code>{code}</code></pre></div></div>')
        out.append("</div>")
    out.append("</div>")
    return "\n".join(out) + "\n"


def render_item(item: Item, repo_root: Path, heading_level: int = 2) -> str:
    """One definition: heading (with its stable anchor), where it lives, then the side-by-side grid."""
    rel = item.path.relative_to(repo_root).as_posix()
    label = {"function": "", "class": "class ", "constant": ""}[item.kind]
    # An HTML heading (md_in_html: still in the table of contents, with its permalink), because in
    # `## name {#id}` Markdown would read the `__` of a name like `__all__` as emphasis.
    h = f"h{heading_level}"
    parts = [f'<{h} id="{item_anchor(item)}" class="lp-head" markdown>{label}`{item.name}`</{h}>\n']
    where = f"line {item.first}" if item.first == item.last else f"lines {item.first}–{item.last}"
    parts.append(f'<p class="src-loc"><code>{rel}</code>, {where}</p>\n')
    parts.append(render_sections(item))
    return "\n".join(parts) + "\n"
