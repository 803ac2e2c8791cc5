"""The house rules of docs/architecture.md, read from the source with `ast` (imports inside functions
count): which package may import which, no import cycle, services import only serving/core, no one
imports another module's private names, and files and classes stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("semgen", "training", "export", "serving")
# package -> the project packages it must not import
FORBIDDEN = {
    "semgen": ("training", "export", "serving"),
    "serving": ("training", "export"),
    "export": ("training", "serving"),
    "training": ("export",),
}
SERVICES = ("pyramid", "semantics", "imagine", "higan")
MAX_SERVING_FILE_LINES, MAX_CLASS_LINES = 300, 200


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every source file of the project (generated stubs excluded)."""
    found = {"semgen_cli": ROOT / "semgen_cli.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "_generated" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def imports(name: str) -> list[tuple[str, tuple[str, ...]]]:
    """(imported module, names taken from it) for every import statement of module `name`, wherever it is."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = tuple(alias.name for alias in node.names)
            found.append((base, names))
            found += [(f"{base}.{n}", ()) for n in names if f"{base}.{n}" in MODULES]  # `from pkg import module`
    return found


def project_module(imported: str) -> str | None:
    """The project module an import resolves to (its longest known prefix), or None for outside code."""
    parts = imported.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in MODULES:
            return ".".join(parts[:i])
    return None


def graph() -> dict[str, set[str]]:
    return {name: {m for imported, _ in imports(name) if (m := project_module(imported)) and m != name}
            for name in MODULES}


def test_packages_import_only_what_their_layer_allows():
    wrong = [f"{name} imports {imported}" for name in MODULES for imported, _ in imports(name)
             if imported.split(".")[0] in FORBIDDEN.get(name.split(".")[0], ())]
    assert wrong == []


def test_services_import_only_serving_core_and_themselves():
    wrong = []
    for name in MODULES:
        parts = name.split(".")
        if parts[0] == "serving" and len(parts) > 2 and parts[1] in SERVICES:
            for imported, _ in imports(name):
                other = imported.split(".")
                if other[0] == "serving" and len(other) > 1 and other[1] not in (parts[1], "core", "_generated"):
                    wrong.append(f"{name} imports {imported}")
    assert wrong == []


def test_nobody_imports_another_modules_private_names():
    wrong = [f"{name} takes {n} from {imported}" for name in MODULES for imported, names in imports(name)
             for n in names if n.startswith("_") and not n.startswith("__") and project_module(imported)
             and project_module(imported) != name]
    assert wrong == []


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a module importing itself)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_not_even_inside_functions():
    edges = graph()
    # a package's __init__ is imported on the way to its modules; only the modules' own imports count
    assert strongly_connected(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_serving_files_are_small():
    long = {str(p.relative_to(ROOT)): n for name, p in MODULES.items()
            if name.startswith("serving") and (n := len(p.read_text().splitlines())) > MAX_SERVING_FILE_LINES}
    assert long == {}


@pytest.mark.parametrize("package", ["serving", "semgen/pipelines"])
def test_classes_are_small(package):
    long = {}
    for path in (ROOT / package).rglob("*.py"):
        if "_generated" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long[f"{path.relative_to(ROOT)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}
