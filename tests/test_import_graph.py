"""The package's import graph, read from the source (ast): no cycle among its modules, counting the
imports inside functions too, and no module that imports cupy when it is itself imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tinyllama_ref"


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: dict) -> list[tuple[str, ast.stmt]]:
    """(module, statement) for each import in the file, anywhere in it. `from a import b` names a.b
    when that is a module, else a; the packages above a module are not counted."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, node))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: {m for m, _ in imported_modules(name, path, modules) if m in modules and m != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read_right():
    graph = import_graph()
    assert "tinyllama_ref.tokenizer.tokenizer" in graph["tinyllama_ref.tokenizer.loaders"]
    assert "tinyllama_ref.formats.gguf" in graph["tinyllama_ref.model"]  # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def _top_level(tree: ast.Module):
    """The statements that run when the module is imported: all but the bodies of functions."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]


def test_no_module_imports_cupy_at_top_level():
    offenders = []
    for name, path in module_files().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in _top_level(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{name}:{node.lineno}" for n in names if n.split(".")[0] == "cupy"]
    assert offenders == []


SUBPACKAGES = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}  # formats, tokenizer


def folder_of(module: str) -> str:
    """The folder a module sits in (`formats`, `tokenizer`), or the top-level module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else module


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Which folder imports which (imports inside functions counted), a folder's own modules left out."""
    out: dict[str, set[str]] = {}
    for module, imported in graph.items():
        out.setdefault(folder_of(module), set()).update(folder_of(m) for m in imported)
    return {folder: targets - {folder} for folder, targets in out.items()}


def test_the_folder_graph_is_read_right():
    assert SUBPACKAGES == {"formats", "tokenizer"}
    graph = {"p.formats.a": {"p.formats.b", "p.errors"}, "p.tokenizer": {"p.tokenizer.c"},
             "p.tokenizer.c": {"p.formats.a"}, "p.convert": {"p.tokenizer.c"}}
    assert folder_graph(graph) == {"formats": {"p.errors"}, "tokenizer": {"formats"}, "p.convert": {"tokenizer"}}
    assert cycles(folder_graph({"p.formats.a": {"p.tokenizer.b"}, "p.tokenizer.b": {"p.x"}, "p.x": {"p.formats.c"},
                                "p.formats.c": set()})) == [["formats", "p.x", "tokenizer"]]


def test_formats_and_tokenizer_do_not_import_each_other():
    """tokenizer/ may read files with formats/; formats/ never imports tokenizer/ (convert.py, above both,
    joins a model and its tokenizer). No two folders (or top-level modules) import each other."""
    folders = folder_graph(import_graph())
    assert "tokenizer" not in folders["formats"]
    assert "formats" in folders["tokenizer"]  # the one direction there is
    assert sorted((a, b) for a in folders for b in folders[a] if a < b and a in folders.get(b, ())) == []


def test_no_cycle_through_top_level_modules_either():
    assert cycles(folder_graph(import_graph())) == []
