"""The package's layers point down: no import cycles, core knows no family, no family imports the runner."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "almostlinear"
# Above every family: the runner and the command line import the families, never the reverse.
TOP = {"almostlinear.audit", "almostlinear.cli", "almostlinear.__main__"}
# Below every family: plain data and helpers any layer may read.
SHARED = {"almostlinear", "almostlinear.families", "almostlinear.clitools"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its file (late imports too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            if node.level:
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.add(candidate if candidate in MODULES else base)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


def _family(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


def test_the_graph_is_read():
    assert len(MODULES) > 100
    assert "almostlinear.core.lever" in GRAPH["almostlinear.core.lever"] | {"almostlinear.core.lever"}
    assert "almostlinear.core.artifact" in GRAPH["almostlinear.core.lever"]


def test_no_import_cycles():
    assert _cycles() == []


def test_no_family_imports_the_runner():
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items() if _family(name) not in TOP
        for target in targets if _family(target) in TOP
    )
    assert offenders == []


def test_core_imports_no_family():
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items() if name.startswith("almostlinear.core")
        for target in targets
        if not target.startswith("almostlinear.core") and target not in SHARED
    )
    assert offenders == []
