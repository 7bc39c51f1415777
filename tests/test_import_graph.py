"""The import graph of ``agent/`` and ``server/`` has no cycles, and the layers keep apart.

The graph is built from the source with :mod:`ast` (nothing is imported): every ``import`` and
``from ... import`` statement counts, at module level and inside functions or methods (a lazy
import that papers over a cycle is still a cycle). Excluded: imports under
``if TYPE_CHECKING:`` (they never run) and imports of modules outside the two packages.

Edges: ``import a.b`` and ``from a.b import c`` point at ``a.b``; ``from a import b`` points at
``a.b`` when ``b`` is a module of the tree, else at ``a``. The implicit import of a package's
``__init__`` when one of its submodules is imported is not an edge (otherwise every package
whose ``__init__`` imports a submodule would "cycle" with it).

Also checked: no module under ``server/services`` or ``server/storage`` imports aiohttp, and
nothing under ``agent/`` imports ``server``.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "server")
NO_AIOHTTP = ("server.services", "server.storage")


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """``dotted.module.name -> file`` for every ``.py`` file of ``packages`` under ``root``."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` except those under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_names(module: str, path: Path, modules: Collection[str]) -> Iterator[tuple[str, int]]:
    """``(dotted name, line)`` for every module ``module`` imports: absolute names; ``from a
    import b`` gives ``a.b`` when that is one of ``modules``, else ``a``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
            continue
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            keep = len(parts) - node.level + (1 if is_package else 0)
            base = ".".join([*parts[:keep], *([base] if base else [])])
        for alias in node.names:
            name = f"{base}.{alias.name}"
            yield (name if name in modules else base), node.lineno


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, dict[str, int]]:
    """``module -> {imported module of the tree: first line importing it}``."""
    modules = module_files(root, packages)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for name, line in imported_names(module, path, modules):
            if name in modules:
                edges.setdefault(name, line)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one
    module (or a module importing itself), found with Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    def strongconnect(start: str) -> None:
        nonlocal counter
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, {}):
                    components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            strongconnect(module)
    return [_one_cycle(graph, component) for component in components]


def _one_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """The shortest cycle through the component's first module (breadth-first search)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(graph.get(node, {})):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start, start]


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    """``a (line 3) -> b (line 9) -> a``."""
    steps = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


def imports_of(root: Path, packages: Iterable[str], prefix: str) -> list[str]:
    """``module:line imports name`` for every import of ``prefix`` (or its submodules)."""
    found = []
    modules = module_files(root, packages)
    for module, path in modules.items():
        for name, line in imported_names(module, path, modules):
            if name == prefix or name.startswith(prefix + "."):
                found.append(f"{module}:{line} imports {name}")
    return sorted(set(found))


# --- the checks on the real tree ------------------------------------------------------------


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 100  # the walk found the packages
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(graph, c) for c in cycles)


def test_services_and_storage_import_no_aiohttp() -> None:
    offenders = [
        line
        for line in imports_of(ROOT, ["server"], "aiohttp")
        if line.startswith(tuple(p + "." for p in NO_AIOHTTP))
    ]
    assert not offenders, "\n".join(offenders)


def test_agent_imports_nothing_of_the_server() -> None:
    offenders = imports_of(ROOT, ["agent"], "server")
    assert not offenders, "\n".join(offenders)


# --- the checker itself, on a synthetic tree -------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": "import os\n\ndef thing():\n    from pkg import c\n    return c\n",
            "pkg/c.py": "from . import a\n",
            "pkg/d.py": "import pkg.a\n",
        },
    )
    graph = import_graph(tmp_path, ["pkg"])
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert describe(graph, cycles[0]) == (
        "pkg.a (line 1) -> pkg.b (line 4) -> pkg.c (line 1) -> pkg.a"
    )


def test_checker_ignores_type_checking_imports_and_sees_aiohttp(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pkg.b import B\nimport aiohttp.web\n",
            "pkg/b.py": "from pkg.a import A\n",
        },
    )
    assert find_cycles(import_graph(tmp_path, ["pkg"])) == []
    assert imports_of(tmp_path, ["pkg"], "aiohttp") == ["pkg.a:4 imports aiohttp.web"]
