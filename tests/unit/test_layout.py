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
