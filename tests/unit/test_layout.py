"""The folder list is the architecture: imports between packages run one way only.

Every import of every module (top-level and inside functions) is read from its AST, so a
lazy import cannot hide a forbidden dependency. ``docs/architecture.md`` explains the
rules; this test enforces them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "serving", "feedback", "training", "deploy", "rlhf", "protos",
            "labeling")

# package → the project packages it may import (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "protos": set(),
    "feedback": {"core"},
    "serving": {"core", "protos"},
    "training": {"core", "feedback"},
    "deploy": {"core", "feedback", "training", "labeling"},
    "labeling": {"core", "feedback", "training"},
    "rlhf": {"core", "feedback", "serving", "training", "deploy", "protos", "labeling"},
}

# Third-party modules core must not import at module level (it is imported by every
# process, the ingester included).
CORE_FORBIDDEN_AT_TOP = {"fastapi", "starlette", "vllm", "torch", "transformers"}


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno, id(node) in top))
    return out


def violations(package: str, root: Path = ROOT) -> list[str]:
    """Every forbidden import in ``package`` as ``file:line imports module``."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        if "_pb2" in path.name:
            continue
        for module, line, at_top in imports_of(path):
            head = module.split(".")[0]
            where = f"{path.relative_to(root)}:{line} imports {module}"
            if head in PACKAGES and head != package and head not in ALLOWED[package]:
                found.append(where)
            if package == "core" and at_top and head in CORE_FORBIDDEN_AT_TOP:
                found.append(where + " at module level")
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package: str) -> None:
    assert violations(package) == []


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    # A serving module importing training, lazily inside a function, is still caught.
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "bad.py").write_text(
        "def f():\n    from training.recipes import ppo\n    return ppo\n")
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "bad.py").write_text("import fastapi\n")
    assert violations("serving", tmp_path) == [
        "serving/bad.py:2 imports training.recipes"]
    assert violations("core", tmp_path) == ["core/bad.py:1 imports fastapi at module level"]


def test_every_package_is_ruled() -> None:
    on_disk = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert on_disk == set(ALLOWED)


# -- no import cycles between the project's modules ------------------------------------------

# Cycles tolerated for now, each as its sorted list of modules; empty, keep it that way.
KNOWN_CYCLES: list[list[str]] = []


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → file of every module in the project's packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_modules(path: Path, package: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, at module level or inside functions.

    ``package`` is the package relative imports start from. ``from a import b`` names the
    module ``a.b`` when there is one, else ``a``; an import of an attribute counts as an
    import of the module that defines it. Parent packages that Python initialises on the
    way are not counted: every module of a package would otherwise reach its
    ``__init__``, which imports some of them back.
    """
    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names += [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                      for a in node.names]
    return {m for m in map(owner, names) if m is not None}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the project modules it imports (itself left out)."""
    files = module_files(root)
    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        graph[module] = imported_modules(path, package, set(files)) - {module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module, as the path
    ``[a, b, …, a]`` of imports that closes it (Tarjan's algorithm, then a path search)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while (w := stack.pop()) != v:
                component.add(w)
            if component:
                components.append(component | {v})

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [cycle_through(graph, component) for component in components]


def cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest import path from the component's first module back to itself."""
    start = min(component)
    paths = {w: [start, w] for w in graph[start] & component}
    while start not in paths:  # breadth first; the component guarantees an end
        paths = {w: path + [w] for path in paths.values()
                 for w in sorted(graph[path[-1]] & component) if w not in path[1:]}
    return paths[start]


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph())
    unknown = [" → ".join(c) for c in cycles if sorted(set(c)) not in KNOWN_CYCLES]
    assert unknown == [], "import cycles:\n" + "\n".join(unknown)


def test_the_cycle_check_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    (tmp_path / "labeling").mkdir()
    (tmp_path / "labeling" / "__init__.py").write_text("from labeling.a import f\n")
    (tmp_path / "labeling" / "a.py").write_text("from .b import g\n\ndef f():\n    return g\n")
    (tmp_path / "labeling" / "b.py").write_text(
        "def g():\n    from labeling import a\n    return a\n")
    (tmp_path / "labeling" / "c.py").write_text("import labeling.b\n")
    graph = import_graph(tmp_path)
    assert graph == {"labeling": {"labeling.a"}, "labeling.a": {"labeling.b"},
                     "labeling.b": {"labeling.a"}, "labeling.c": {"labeling.b"}}
    assert import_cycles(graph) == [["labeling.a", "labeling.b", "labeling.a"]]
