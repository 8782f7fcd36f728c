"""The store and extraction code keep their seams: no module imports another module's private names,
and the modules of ``extraction`` import each other without a circle (checked on the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import sail_vision

PACKAGE = Path(sail_vision.__file__).parent
AREAS = ["extraction", "feature_store", "feature_store.py", "cli/consolidate.py", "cli/info.py", "folder_lock.py", "pause_points.py"]


def _files():
    for area in AREAS:
        path = PACKAGE / area
        yield from (sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else [])


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            yield node, target


def test_no_module_imports_private_names_of_another():
    found = []
    for path in _files():
        for node, target in _imports(path, top_level_only=False):
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if private:
                found.append(f"{path.relative_to(PACKAGE)}: from {target} import {', '.join(private)}")
        source = path.read_text(encoding="utf-8")
        for name in ("runner._", "feature_store._", "writer._", "finishing._", "planning._", "parts._"):
            if name in source:
                found.append(f"{path.relative_to(PACKAGE)}: uses {name}...")
    assert not found, found


def test_extraction_modules_import_without_a_circle():
    graph = {}
    for path in sorted((PACKAGE / "extraction").glob("*.py")):
        if path.name == "__init__.py":
            continue
        module = _module(path)
        graph[module] = set()
        for node, target in _imports(path, top_level_only=False):  # lazy imports count too
            names = [f"{target}.{a.name}" for a in node.names] + [target]
            graph[module].update(n for n in names if n.startswith("sail_vision.extraction.") and n != module)
    modules = set(graph)
    graph = {m: {t for t in targets if t in modules} for m, targets in graph.items()}
    seen, stack = set(), []

    def visit(module):
        if module in stack:
            raise AssertionError(" -> ".join(stack[stack.index(module):] + [module]))
        if module in seen:
            return
        stack.append(module)
        for target in sorted(graph[module]):
            visit(target)
        stack.pop()
        seen.add(module)

    for module in sorted(graph):
        visit(module)
