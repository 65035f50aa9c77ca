"""The "Read the model" pages: one chapter per file, every definition laid out prose | code.

Without a browser: docs/gen_pages.py's READING_ORDER and FIGURES match the package, and every
definition renders (tools/docs_annotate.py) as exactly one side-by-side grid whose code column holds
the file's own lines, numbered as in the file, with docstrings and full-line comments moved to the
prose column. With the docs extras installed: the site builds under --strict, and its HTML has that
structure. With Chromium too: tools/check_docs_layout.py passes at a 1400x900 window, and fails,
naming the definition and line, on a page whose layout is broken on purpose.
"""
from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import REPO, load_module



gen_pages = load_module("gen_pages_under_test", REPO / "docs" / "gen_pages.py")  # its main() runs only in mkdocs
check = load_module("check_docs_layout", REPO / "tools" / "check_docs_layout.py")
import docs_annotate as annotate  # noqa: E402  (on sys.path through gen_pages)

CODE_LINE = re.compile(r'<span class="lp-l" data-ln="(\d+)"(?: style="--in:\d+")?>(.*?)\n</span>', re.S)


def _code_lines(fragment: str) -> list[tuple[int, str]]:
    """(line number, plain text) of every code line in rendered HTML."""
    return [(int(n), html.unescape(re.sub(r"<[^>]+>", "", body))) for n, body in CODE_LINE.findall(fragment)]


# -- the plan --------------------------------------------------------------------------------------

def test_reading_order_covers_the_package():
    assert gen_pages.plan_problems() == []


def test_plan_problems_name_what_is_wrong(tmp_path):
    pkg = tmp_path / "tinyllama_ref"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Re-exports only."""\nfrom .a import f\n\n__all__ = ["f"]\n')
    (pkg / "a.py").write_text("def f():\n    return 1\n")
    (pkg / "b.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("def g():\n    return 2\n")
    order = [("tinyllama_ref/a.py", "A"), ("tinyllama_ref/gone.py", "Gone"), ("tinyllama_ref/a.py", "Again")]
    figures = {("tinyllama_ref/a.py", "nope"): ("x.png", ""), ("tinyllama_ref/b.py", "X"): ("y.png", "")}
    problems = "\n".join(gen_pages.plan_problems(order, figures, repo=tmp_path))
    assert "lists tinyllama_ref/a.py more than once" in problems
    assert "tinyllama_ref/gone.py, which does not exist" in problems
    assert "tinyllama_ref/b.py has no chapter" in problems
    assert "tinyllama_ref/sub/__init__.py has no chapter" in problems  # it defines something
    assert "tinyllama_ref/__init__.py" not in problems  # it only re-exports
    assert "after tinyllama_ref/a.py:nope, which is not a top-level definition" in problems
    assert "places y.png in tinyllama_ref/b.py, which READING_ORDER does not list" in problems
    assert gen_pages.plan_problems([("tinyllama_ref/a.py", "A"), ("tinyllama_ref/b.py", "B"),
                                    ("tinyllama_ref/sub/__init__.py", "S")], {("tinyllama_ref/b.py", "X"): ("y", "")},
                                   repo=tmp_path) == []


def test_chapter_pages_are_named_after_their_files():
    assert gen_pages.chapter_page("tinyllama_ref/llama.py") == "llama.md"
    assert gen_pages.chapter_page("tinyllama_ref/tokenizer/bpe.py") == "tokenizer-bpe.md"
    pages = [gen_pages.chapter_page(path) for path, _ in gen_pages.READING_ORDER]
    assert len(set(pages)) == len(pages)


# -- one definition, one grid ----------------------------------------------------------------------

SAMPLE = '''"""Module doc."""


# Prose above f.
def f(x):
    """Doc of f with $a_b$ math and `code_span`."""
    y = x + 1  # a trailing comment stays in the code

    # Step two: double it,
    # in one section of its own.
    z = 2 * y
    s = "# not a comment"
    return z


class C:
    """A class."""

    # -- helpers ------------------
    def m(self):
        """Method doc."""
        return 1
'''


def test_comments_and_method_docstrings_start_sections(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text(SAMPLE)
    f, c = annotate.module_items(path, tmp_path)
    secs = annotate.sections(f)
    assert [s.lines for s in secs] == [[5, 7], [11, 12, 13]]
    assert secs[0].prose[0] == "Prose above f."
    assert "$a_b$" in secs[0].prose[1] and "`code_span`" in secs[0].prose[1]  # math left for MathJax
    assert secs[1].prose == ["Step two: double it, in one section of its own."]
    rendered = annotate.render_item(f, tmp_path)
    assert rendered.count('<div class="lp"') == 1 and rendered.count('<div class="lp-sec"') == 2
    assert "a trailing comment stays in the code" in dict(_code_lines(rendered))[7]
    assert "Step two" not in "".join(text for _, text in _code_lines(rendered))

    secs = annotate.sections(c)
    assert [s.lines for s in secs] == [[16], [20, 22]]  # the blank line after the docstring is dropped
    assert secs[0].prose == ["A class."]
    assert secs[1].prose[0].startswith("helpers") and ".lp-label" in secs[1].prose[0]
    assert secs[1].prose[1] == "Method doc."


def _package_items():
    for path, _ in gen_pages.READING_ORDER:
        for item in annotate.module_items(REPO / path, REPO):
            yield path, item


@pytest.mark.parametrize("path", [path for path, _ in gen_pages.READING_ORDER])
def test_every_definition_is_one_side_by_side_grid(path):
    lines = (REPO / path).read_text(encoding="utf-8").splitlines()
    for item in annotate.module_items(REPO / path, REPO):
        out = annotate.render_item(item, REPO)
        where = f"{path}:{item.name}"
        assert out.count('<div class="lp"') == 1, where
        n_secs = len(annotate.sections(item))
        assert out.count('<div class="lp-sec"') == n_secs, where
        assert out.count('<div class="lp-prose"') == n_secs and out.count('<div class="lp-code') == n_secs, where
        assert "```python" not in out and "{.python" not in out, f"{where}: code left as a fenced block"
        assert f'<h2 id="{annotate.item_anchor(item)}" class="lp-head" markdown>' in out, where
        code = _code_lines(out)
        numbers = [n for n, _ in code]
        assert numbers == sorted(set(numbers)) and numbers[0] == item.first and numbers[-1] <= item.last, where
        for n, text in code:
            assert text == lines[n - 1], f"{where}: line {n} shows {text!r}, the file has {lines[n - 1]!r}"
        if item.doc_lines:
            assert not set(range(item.doc_lines[0], item.doc_lines[1] + 1)) & set(numbers), f"{where}: docstring in code"
        removed, comments = annotate._cut_lines(item)
        for n in range(item.first, item.last + 1):  # every line of code is somewhere
            assert n in numbers or n in removed or not lines[n - 1].strip(), f"{where}: line {n} lost"


# -- the built site ----------------------------------------------------------------------------------

DOCS_MODULES = ("mkdocs", "material", "mkdocs_gen_files", "mkdocs_literate_nav", "mkdocstrings", "mathjax")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = [m for m in DOCS_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"docs extras not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


class _Tree(HTMLParser):
    """Just enough of a DOM: (tag, attrs, children) for every element."""

    VOID = {"br", "img", "hr", "input", "meta", "link", "source", "wbr", "col", "area", "base", "embed", "track"}

    def __init__(self):
        super().__init__()
        self.root = ("#root", {}, [])
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = (tag, dict(attrs), [])
        self.stack[-1][2].append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break


def _classes(node) -> set:
    return set((node[1].get("class") or "").split())


def _find(node, cls: str) -> list:
    found = [node] if cls in _classes(node) else []
    for child in node[2]:
        found += _find(child, cls)
    return found


@pytest.mark.slow
def test_built_pages_have_one_grid_per_definition(site):
    pages = sorted((site / "read").glob("*.html"))
    chapters = {gen_pages.chapter_page(p).replace(".md", ".html") for p, _ in gen_pages.READING_ORDER}
    assert {p.name for p in pages} == chapters | {"index.html"}
    for page in pages:
        if page.name == "index.html":
            continue
        text = page.read_text(encoding="utf-8")
        tree = _Tree()
        tree.feed(text)
        grids, heads = _find(tree.root, "lp"), _find(tree.root, "lp-head")
        assert grids and len(grids) == len(heads), page.name
        for grid in grids:
            secs = [c for c in grid[2] if "lp-sec" in _classes(c)]
            assert secs and len(secs) == len(grid[2]), f"{page.name}: {grid[1].get('data-def')}"
            for sec in secs:
                kinds = [sorted(_classes(c) & {"lp-prose", "lp-code"}) for c in sec[2]]
                assert kinds == [["lp-prose"], ["lp-code"]], f"{page.name}: {grid[1].get('data-def')}"
                assert len(_find(sec[2][1], "highlight")) == 1
        assert "joined-top" not in text and "language-python" not in text  # no separate signature/body blocks
    layers = (site / "read" / "llama.html").read_text(encoding="utf-8")
    assert '<span class="arithmatex">\\(' in layers  # math left for MathJax (arithmatex, generic mode)
    assert 'src="../figures/gqa_head_sharing.png"' in layers
    for sidebar in ("navigation", "toc"):  # front matter `hide`: the grid gets the page's whole width
        assert f'data-md-type="{sidebar}" hidden>' in layers


@pytest.fixture(scope="module")
def chromium():
    found = check.find_chromium()
    if found is None:
        pytest.skip("no Chromium to check the layout with (apt-get install chromium)")
    return found


@pytest.mark.slow
def test_layout_in_chromium(chromium, site, capsys):
    status = check.main([str(site), "--chromium", chromium, "--jobs", "2"])
    out = capsys.readouterr().out
    assert status == 0, out


@pytest.mark.slow
def test_site_loads_nothing_from_other_servers_and_search_works_over_http(chromium, site, capsys):
    search = load_module("check_docs_search", REPO / "tools" / "check_docs_search.py")
    assert search.remote_references(site) == []
    assert search.main([str(site), "--chromium", chromium]) == 0, capsys.readouterr().out


@pytest.mark.slow
def test_layout_check_fails_on_a_broken_page(chromium, site):
    page = (site / "read" / "llama.html").read_text(encoding="utf-8")
    broken = site / "broken" / "llama.html"  # same depth as read/, so ../assets still resolves
    broken.parent.mkdir(exist_ok=True)
    sabotage = ("<style>.md-typeset .lp { display: block !important; }"
                ".md-typeset .lp-code pre > code { white-space: pre !important; overflow: auto !important; }"
                ".md-typeset .lp-code { width: 320px; }</style>")
    broken.write_text(page.replace("</head>", sabotage + "</head>", 1), encoding="utf-8")
    report = check.check_page(chromium, broken)
    problems = [check.describe(p) for p in report["problems"]]
    assert any("is not right of its prose" in p and "tinyllama_ref.llama.rms_norm, line " in p for p in problems), \
        problems
    assert any("code block clipped" in p and "tinyllama_ref.llama." in p for p in problems), problems
