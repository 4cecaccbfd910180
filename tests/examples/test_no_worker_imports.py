"""The example apps use the worker's public contract only: nothing of ours is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OURS = {"tasks", "workers"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


SOURCES = sorted(EXAMPLES.rglob("*.py"))


def test_there_are_examples() -> None:
    assert {p.parent.name for p in SOURCES} >= {"flask_app", "speech"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_imports_nothing_of_ours(path: Path) -> None:
    assert not imported_roots(path) & OURS
