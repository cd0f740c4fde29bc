"""The package's modules import one another without a cycle, counting imports inside functions too.

A cycle that only closes through a function-level import still ties two modules into one unit (neither can be
understood, moved or tested without the other), so every ``import`` statement anywhere in a module counts. Importing
a package counts as importing its ``__init__`` (which runs its re-exports), and ``from P import name`` where
``P.name`` is a submodule counts as importing that submodule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ringstream

PACKAGE_DIR = Path(ringstream.__file__).resolve().parent
PACKAGE = "ringstream"


def _module_names() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is named by its ``__init__.py``)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(importer: str, is_package: bool, module: str | None, level: int) -> str:
    """The absolute name an ``import``/``from`` statement in ``importer`` refers to."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _with_packages(name: str, importer: str, modules: dict[str, Path]) -> set[str]:
    """``name`` and the packages above it whose ``__init__`` the import runs (not those that contain the importer,
    which are already initialised when it runs)."""
    targets = set()
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in modules and not (importer == prefix or importer.startswith(prefix + ".")):
            targets.add(prefix)
    if name in modules:
        targets.add(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, anywhere in its source."""
    modules = _module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        edges |= _with_packages(alias.name, name, modules)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, is_package, node.module, node.level)
                if target.split(".")[0] != PACKAGE:
                    continue
                edges |= _with_packages(target, name, modules)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        edges |= _with_packages(sub, name, modules)
        edges.discard(name)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (iterative, so deep graphs do not recurse)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
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
                    components.append(sorted(component))
    return components


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as the chain of imports that closes it."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    return paths[node] + [start]
                if child not in paths:
                    paths[child] = paths[node] + [child]
                    following.append(child)
        frontier = following
    return component


def test_graph_sees_function_level_and_submodule_imports():
    """The walker resolves relative imports and counts ``from P import submodule`` and imports inside functions."""
    graph = import_graph()
    assert "ringstream.geometry.map" in graph["ringstream.geometry"]  # from .map import ... in __init__
    assert "ringstream.errors" in graph["ringstream.geometry.map"]  # from ..errors import ...
    assert "ringstream.daemon.supervisor" in graph["ringstream.daemon.cli"]  # imported inside cmd_run
    assert "ringstream.geometry" in graph["ringstream.daemon.cli"]  # a package's __init__ runs on the way
    assert "ringstream.daemon" not in graph["ringstream.daemon.cli"]  # its own package is already initialised
    assert all(target in graph for edges in graph.values() for target in edges)


def test_no_import_cycles():
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    report = "\n".join(" -> ".join(_one_cycle(graph, c)) + f"   ({len(c)} modules: {', '.join(c)})" for c in cycles)
    assert not cycles, f"import cycles in the package:\n{report}"


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [c for c in strongly_connected(graph) if len(c) > 1] == [["a", "b", "c"]]
    assert _one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
