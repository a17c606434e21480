"""The code stays the shape docs/layout.md describes: one job per module, no cycles, short functions."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat

import helpers

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "facegan"
#: Functions allowed over LIMIT lines, and why.
LONG_ON_PURPOSE = {
    "build_parser": "a declarative table: one block of flags per subcommand",
    "create_app": "the HTTP routes are closures over the loaded generators; each route is a few lines",
}
LIMIT = 60
#: ``helpers.name`` in code, not the file name "helpers.py".
QUALIFIED = re.compile(r"\bhelpers\.(\w+)\b(?![\"'])")


def _relative_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return names


def test_no_module_of_the_package_imports_one_that_imports_it():
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    graph = {m: _relative_imports(p) & set(modules) for m, p in modules.items()}

    def reaches(start: str, target: str, seen: set) -> bool:
        return any(d == target or (d not in seen and not seen.add(d) and reaches(d, target, seen))
                   for d in graph[start])

    cycles = [m for m in graph if reaches(m, m, set())]
    assert not cycles, f"import cycles through {sorted(cycles)}"


def test_no_function_is_longer_than_the_limit_but_the_named_ones():
    long = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1
                if lines > LIMIT and node.name not in LONG_ON_PURPOSE:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, f"split these, or name them in LONG_ON_PURPOSE with the reason: {long}"


def test_helpers_exports_what_the_notebooks_use_and_nothing_missing():
    assert all(hasattr(helpers, name) for name in helpers.__all__)
    used = set()
    for name in ("face_generation.ipynb", "face_generation_exercise.ipynb"):
        nb = nbformat.read(ROOT / name, as_version=4)
        used |= {m for c in nb.cells if c.cell_type == "code" for m in QUALIFIED.findall(c.source)}
    used |= set(re.findall(r"from helpers import ([\w, ]+)", (ROOT / "face_generation.ipynb").read_text()))
    used = {n.strip() for u in used for n in u.split(",")}
    assert len(used) > 20 and "nearest_real_faces" in used  # the scan sees what the notebook calls
    missing = used - set(helpers.__all__)
    assert not missing, f"used by a notebook but not in helpers.__all__: {sorted(missing)}"
