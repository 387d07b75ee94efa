"""The shape of the house: no import circles inside aigc/.

The graph has one node per module (a package is its `__init__`) and an edge for every `import` /
`from ... import` in it, function-level ones included. An edge goes to the module named: `from aigc import
evaluation` names the module aigc.evaluation; `from aigc.tracking import rank_runs` or `from aigc import
tracking` names the package aigc.tracking, i.e. its `__init__`, whose own edges lead on to what it re-exports.
Python runs a package's `__init__` before any of its submodules, but that is the import machinery, not a
dependency: `aigc.tracking.log` importing `aigc.tracking.connection` is no edge to `aigc.tracking`.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aigc"


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module in aigc/ (a package by its __init__.py)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The aigc modules `name` (at `path`) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            edges |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {edge for edge in edges if edge in known and edge != name}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once every path from it was walked
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_walk_resolves_every_kind_of_import(tmp_path):
    known = {"aigc", "aigc.tracking", "aigc.tracking.log", "aigc.tracking.connection", "aigc.evaluation"}
    source = tmp_path / "log.py"
    source.write_text("import os\nfrom . import connection\nfrom aigc import evaluation as ev\n"
                      "def f():\n    from aigc.tracking import rank_runs\n")
    assert imports("aigc.tracking.log", source, known) == {"aigc.tracking.connection", "aigc.evaluation",
                                                           "aigc.tracking"}
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_aigc_has_no_import_circle():
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    circle = cycle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)
