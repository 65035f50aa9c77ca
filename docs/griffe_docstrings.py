"""A griffe extension for the API reference: our docstrings are prose with doctests and math, not a
section format, so they get the same Markdown preparation as the "Read the model" pages
(doctest examples fenced as `pycon`, indented blocks kept verbatim, `<s>`, `*` and `_` escaped)."""
from __future__ import annotations

import sys
from pathlib import Path

import griffe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from docs_annotate import docstring_to_markdown  # noqa: E402


class ProseDocstrings(griffe.Extension):
    def on_package(self, *, pkg, **kwargs) -> None:
        self._walk(pkg)

    def _walk(self, obj) -> None:
        if obj.is_alias:
            return
        if obj.docstring is not None and not getattr(obj.docstring, "_prose_done", False):
            obj.docstring.value = docstring_to_markdown(obj.docstring.value).rstrip("\n")
            obj.docstring._prose_done = True
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member)
