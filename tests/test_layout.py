"""The code's layout: no import circle anywhere, a storage package used from outside only through
its front door, and every module of the server, the core and the benchmark small (STYLE.md: at
most 400 lines).

``python tests/test_layout.py`` prints the modules held small that are past three quarters of the
limit, with their sizes, and any import circle.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "groups", "bench")
STORAGE = "server.storage"
#: the packages whose every module is held small (``bench`` too: a tool, but read and changed as
#: often as the server, and its generator and command line are split into modules like the server's)
HELD_SMALL = ("server", "groups", "bench")
#: a module held small past this many lines has more than one job (STYLE.md)
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Every module of the project's packages by dotted name (a package by its ``__init__``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts:  # Alembic loads these as files, not as modules
                continue
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The project modules ``name`` imports, at any depth of its code (``TYPE_CHECKING`` too)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            # ``from . import api`` names a module; ``from .storage import Database`` a package
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imports(name, path, known)) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others() -> None:
    """No import circle among the modules of server, groups and bench (type-only imports count)."""
    assert circles(graph()) == []


def test_the_circle_finder_finds_a_circle() -> None:
    """The check has teeth: a -> b -> c -> a is one circle; d -> a is not part of it."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def held_small() -> dict[str, int]:
    """The sizes of the modules held small: every module of the server, the core and the benchmark,
    migrations aside."""
    return {
        name: len(path.read_text().splitlines())
        for name, path in modules().items()
        if name.split(".")[0] in HELD_SMALL
    }


def test_every_module_of_the_server_the_core_and_the_benchmark_is_small() -> None:
    """Each module of ``server`` (its storage package too), ``groups`` and ``bench`` has one job:
    none is over ~400 lines."""
    sizes = held_small()
    assert len([n for n in sizes if n.startswith(f"{STORAGE}.")]) > 10  # the storage package is looked at
    assert {"bench.__main__", "bench.load"} <= sizes.keys()  # and the benchmark's command line and generator
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_callers_import_storage_from_the_package_not_its_insides() -> None:
    """Outside the storage package, nobody imports ``server.storage.<module>``."""
    inside = {n for n in modules() if n.startswith(f"{STORAGE}.")}
    reaching_in = {
        name: sorted(targets & inside)
        for name, targets in graph().items()
        if not name.startswith(STORAGE) and targets & inside
    }
    assert reaching_in == {}


if __name__ == "__main__":
    for name, size in held_small().items():
        if size > MAX_LINES * 3 // 4:
            print(f"{size:5d}  {name}")
    found = circles(graph())
    print("import circles:", found or "none")
    sys.exit(1 if found else 0)
