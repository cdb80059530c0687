"""The package's shape: no import cycle, small modules and functions, a README that maps the tree.

These read the source with `ast` (nothing is imported), so they run in a second.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kernelib"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by `__init__`)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the kernelib modules it imports anywhere (function bodies too).

    `from kernelib.a import b` names the module `kernelib.a.b` when that is one, else
    `kernelib.a`; importing `kernelib.p.x` from outside package `p` also runs `p/__init__`,
    so it counts as an import of `kernelib.p` as well.
    """
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kernelib"):
                targets |= {resolve(f"{node.module}.{a.name}") for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names if a.name.startswith("kernelib")}
        for target in list(targets - {None}):
            parent = target.rpartition(".")[0]
            while parent != "kernelib" and parent:
                if not (name == parent or name.startswith(parent + ".")):
                    targets.add(parent)
                parent = parent.rpartition(".")[0]
        graph[name] = targets - {None, name, "kernelib"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

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
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            if group:
                found.append(sorted([v, *group]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_hand_made_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_kernelib():
    graph = import_graph(modules())
    found = cycles(graph)
    assert found == [], "import cycles (each group imports itself round): " + "; ".join(
        f"{g}: " + ", ".join(f"{m} -> {sorted(graph[m] & set(g))}" for m in g) for g in found)


def _long_functions(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    long = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            size = node.end_lineno - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            reason = "#" in lines[node.lineno - 1] or lines[first - 2].strip().startswith("#")
            if size > MAX_FUNCTION_LINES and not reason:
                long.append(f"{node.name} ({size} lines)")
    return long


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_and_function_sizes(name):
    path = modules()[name]
    size = len(path.read_text().splitlines())
    assert size <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)}: {size} lines"
    assert _long_functions(path) == [], (
        f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines without a "
        "one-line reason beside their def")


def test_readme_layout_lists_every_module():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| module |", text.index("## Layout")):]
    table = table[:table.index("\n\n")]
    listed = set()
    for row in table.splitlines()[2:]:
        listed |= {n.strip("/") for n in re.findall(r"`([^`]+)`", row.split("|")[1])}
    top = {n.split(".")[1] for n in modules() if n.count(".") >= 1}
    top |= {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert sorted(top - listed) == [], "modules missing from the README's Layout table"
    # a row naming a module inside a package (`export/writers`) names one that exists
    absent = [n for n in listed if not ((PACKAGE / f"{n}.py").is_file() or (PACKAGE / n).is_dir())]
    assert absent == [], "the Layout table names modules that do not exist"
