"""The house rules on size, checked on the source: no class over 250 lines, no function over 60 (tests/test_record.py
checks that only cnnlab/record/ speaks to MLflow and that no import circle exists)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnnlab"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


@pytest.mark.parametrize("kind, most", [(ast.ClassDef, 250), ((ast.FunctionDef, ast.AsyncFunctionDef), 60)])
def test_no_class_or_function_is_too_long(kind, most):
    long = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in SOURCES for node in ast.walk(_tree(path))
            if isinstance(node, kind) and node.end_lineno - node.lineno + 1 > most]
    assert long == []
