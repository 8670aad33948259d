"""The package's own import graph: one namespace, no cycles between files, layers that point one way.

Every ``import`` in the package's files counts, also those inside functions (a lazy import is
still a dependency); only imports under ``if TYPE_CHECKING:`` (never run) are left out.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import zoo

# Layers that must not reach up: the module (or package prefix) -> what it may import from the project.
BLOCK_LIBRARY = "zoo.blocks"
REGISTRY = "zoo.registry"
# The hub reads and writes folders; it never builds a model.
HUB_FORBIDDEN = ("zoo.model", "zoo.factory", "zoo.builder", "zoo.combinators", "zoo.blocks", "zoo.train", "zoo.cli")


def package_files() -> dict[str, Path]:
    """Module name -> file, for every module of the installed ``zoo`` package (``zoo.blocks`` included)."""
    files: dict[str, Path] = {}

    def walk(package: str) -> None:
        module = importlib.import_module(package)
        for folder in module.__path__:
            for path in sorted(Path(folder).iterdir()):
                if path.is_file() and path.suffix == ".py":
                    name = package if path.stem == "__init__" else f"{package}.{path.stem}"
                    files[name] = path
                elif path.is_dir() and (path / "__init__.py").is_file():
                    walk(f"{package}.{path.name}")

    walk("zoo")
    if BLOCK_LIBRARY not in files:  # an editable install maps blocks/ beside zoo/, not inside it
        walk(BLOCK_LIBRARY)
    return files


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    files = package_files()

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or _under_type_checking(node, parents):
                continue
            if isinstance(node, ast.Import):
                targets.update(filter(None, (known(alias.name) for alias in node.names)))
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                target = full if full in files else known(base)
                if target:
                    targets.add(target)
        graph[module] = targets - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_block_library_is_part_of_the_zoo_namespace():
    import zoo.blocks

    assert Path(zoo.blocks.__file__).parent.name == "blocks"
    assert zoo.get_block("ds_gate").__module__.startswith("zoo.blocks.")
    with pytest.raises(ImportError, match="zoo.blocks"):
        importlib.import_module("blocks")


def test_no_import_cycles_between_files(graph):
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_blocks_import_only_blocks_and_the_registry(graph):
    outside = {
        module: sorted(t for t in targets if not t.startswith(f"{BLOCK_LIBRARY}.") and t not in (BLOCK_LIBRARY, REGISTRY))
        for module, targets in graph.items() if module == BLOCK_LIBRARY or module.startswith(f"{BLOCK_LIBRARY}.")
    }
    assert {m: t for m, t in outside.items() if t} == {}


def test_the_registry_is_the_bottom_layer(graph):
    assert graph[REGISTRY] == set()


def test_the_hub_never_builds_a_model(graph):
    def forbidden(target: str) -> bool:
        return any(target == name or target.startswith(f"{name}.") for name in HUB_FORBIDDEN)

    assert sorted(filter(forbidden, graph["zoo.hub"])) == []


def test_graph_sees_lazy_imports_and_skips_type_checking_ones(graph):
    assert "zoo.hub" in graph["zoo.model"]  # SeqRecModel.save_pretrained imports it inside the method
    assert "zoo.data.dataset" not in graph["zoo.data.split"]  # only under TYPE_CHECKING
    assert zoo.__name__ in graph  # the package's __init__ is a node too
