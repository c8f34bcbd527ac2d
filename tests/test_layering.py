"""The import layers: the backend is the floor, and neither npsn's parts nor the benchmark helpers import in a circle.

Every ``import`` statement counts, also those inside functions (a lazy import is still a dependency).
npsn's parts are its subpackages and top-level modules (``npsn.nn``, ``npsn.gan``, ``npsn.optim``,
...); the benchmark helpers are the modules of ``benchmarks/``.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_modules(path):
    """The absolute module names a Python file imports (``from a.b import c`` gives a.b and a.b.c)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def part_of(module, package):
    """The part of ``package`` a module name belongs to (``npsn.gan.trainer`` -> ``npsn.gan``), or None."""
    parts = module.split(".")
    if parts[0] != package or len(parts) < 2:
        return None
    candidate = os.path.join(REPO, package, parts[1])
    return f"{package}.{parts[1]}" if os.path.isdir(candidate) or os.path.isfile(candidate + ".py") else None


def import_graph(package):
    """{part: parts it imports} over every .py file under ``package``."""
    graph = {}
    for root, _, files in os.walk(os.path.join(REPO, package)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
            source = part_of(module.removesuffix(".__init__"), package)
            if source is None:
                continue
            targets = {part_of(m, package) for m in imported_modules(path)} - {None, source}
            graph.setdefault(source, set()).update(targets)
    return graph


def find_cycle(graph):
    """A list of nodes forming a cycle, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_backend_imports_nothing_of_npsn():
    graph = import_graph("npsn")
    assert graph["npsn.backend"] == set(), graph["npsn.backend"]


@pytest.mark.parametrize("package", ["npsn", "benchmarks"])
def test_no_circular_imports(package):
    assert find_cycle(import_graph(package)) is None, find_cycle(import_graph(package))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
