"""The house rules, checked on the source: MLflow is imported only by cnnlab/record/, no class over 250 lines, no
function over 60, and no import circle between cnnlab's modules."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnnlab"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _imports(path: Path, tree: ast.Module):
    """(module imported, line) for every import in `path`, relative ones made absolute."""
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = here[:-1] if here[-1] != "__init__" else here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if node.module is None:  # from . import x: the modules x
                for alias in node.names:
                    yield f"{module}.{alias.name}", node.lineno
            else:
                yield module, node.lineno


def test_only_the_record_package_imports_mlflow():
    outside = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in SOURCES for name, line in
               _imports(path, _tree(path)) if name.split(".")[0] == "mlflow" and "record" not in path.parts]
    assert outside == []


@pytest.mark.parametrize("kind, most", [(ast.ClassDef, 250), ((ast.FunctionDef, ast.AsyncFunctionDef), 60)])
def test_no_class_or_function_is_too_long(kind, most):
    long = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in SOURCES for node in ast.walk(_tree(path))
            if isinstance(node, kind) and node.end_lineno - node.lineno + 1 > most]
    assert long == []


def test_no_import_circle_at_import_time():
    """Module-level imports between cnnlab's modules form no cycle (imports inside functions are deferred)."""
    names = {path: ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
             for path in SOURCES}
    edges = {}
    for path, name in names.items():
        tree = _tree(path)
        top = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
        edges[name] = {m for m, _ in _imports(path, top) if m in names.values() and m != name}
    assert "cnnlab.record.store" in edges["cnnlab.record"] and "cnnlab.schema" in edges["cnnlab.config"]
    done, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import circle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        stack.pop()
        done.add(node)

    for name in sorted(edges):
        visit(name)
