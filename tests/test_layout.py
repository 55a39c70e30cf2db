"""The package's shape: one module per target, no target importing another, no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from apex_tools.targets import ALL, module_name

PACKAGE = Path(__file__).resolve().parent.parent / "apex_tools"


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_of(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports anywhere (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import of {node.module}; the package uses absolute ones"
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            found |= subs
            if len(subs) < len(node.names) and node.module in modules:  # names defined in the module
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    # Importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer is inside them.
    for name, deps in graph.items():
        inside = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        for dep in list(deps):
            parts = dep.split(".")
            deps |= {".".join(parts[:i]) for i in range(2, len(parts))} & modules.keys() - inside
    return graph


def test_every_target_has_its_module() -> None:
    modules = _modules()
    assert [t for t in ALL if module_name(t) not in modules] == []


def test_no_target_imports_another() -> None:
    graph = _graph()
    targets = {module_name(t) for t in ALL}
    crossing = {m: sorted(graph[m] & targets - {m}) for m in targets if graph[m] & targets - {m}}
    assert crossing == {}


def test_no_import_circle() -> None:
    graph = _graph()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for dep in sorted(graph[node]):
            if dep == node or dep in done:
                continue
            if dep in on_path:
                cycles.append(path[path.index(dep):] + [dep])
                continue
            visit(dep, path + [dep], on_path | {dep}, done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], {start}, done)
    assert cycles == []


@pytest.mark.parametrize("edge", ["apex_tools.main", "apex_tools.tasks"])
def test_library_never_imports_the_program_edge(edge: str) -> None:
    graph = _graph()
    library = {m for m in graph if m not in ("apex_tools.main", "apex_tools.tasks", "apex_tools.__main__")}
    assert sorted(m for m in library if edge in graph[m]) == []
