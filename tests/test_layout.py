"""The code stays the shape docs/layout.md describes: one job per module, each in the map, no cycles, short
functions; subpackages (facegan/checks) included."""
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


def _module_name(path: Path) -> str:
    """``facegan/checks/report.py`` -> ``facegan.checks.report``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports, relative imports resolved to full names (``from . import x`` -> ``pkg.x``)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""  # level 2: the parent package
            module = ".".join(filter(None, (base, node.module)))
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
    return names


#: Every module of the package, subpackages included (facegan/checks/...), by its full name.
MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_scans_see_every_module_of_the_package_and_its_subpackages():
    assert {"facegan", "facegan.train", "facegan.checks", "facegan.checks.report", "facegan.checks.generator"} \
        <= set(MODULES)
    assert "facegan.checks.report" in _imports(PACKAGE / "checks" / "generator.py")
    assert {"facegan.distributed", "facegan.config"} <= _imports(PACKAGE / "train.py")  # from . import x, from .x


def test_no_module_of_the_package_imports_one_that_imports_it():
    graph = {m: _imports(p) & set(MODULES) for m, p in MODULES.items()}

    def reaches(start: str, target: str, seen: set) -> bool:
        return any(d == target or (d not in seen and not seen.add(d) and reaches(d, target, seen))
                   for d in graph[start])

    cycles = [m for m in graph if reaches(m, m, set())]
    assert not cycles, f"import cycles through {sorted(cycles)}"


def test_the_package_never_imports_the_front_doors():
    """helpers.py and problem_unittests.py import the package; the package importing them back would be a cycle."""
    back = [f"{m} imports {name}" for m, p in MODULES.items() for name in sorted(_imports(p))
            if name.split(".")[0] in ("helpers", "problem_unittests")]
    assert not back, back


def test_every_module_of_the_package_has_a_row_in_the_module_map():
    rows = set(re.findall(r"^\| `(facegan/[\w/]+\.py)` \|", (ROOT / "docs" / "layout.md").read_text(), re.M))
    assert len(rows) > 20  # the pattern reads the tables
    missing = [path for path in (p.relative_to(ROOT).as_posix() for p in MODULES.values()) if path not in rows]
    assert not missing, f"add a row to docs/layout.md for {missing}"


def test_no_function_is_longer_than_the_limit_but_the_named_ones():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1
                if lines > LIMIT and node.name not in LONG_ON_PURPOSE:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({lines} lines)")
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
