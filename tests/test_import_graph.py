"""vit_accel's modules import each other without a cycle, counting imports deferred into functions (a cycle held
together by a deferred import still ties the modules together); imports only for type checkers do not count."""

import ast
from pathlib import Path

from factories import ROOT

PACKAGE = ROOT / "vit_accel"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports, anywhere in it but under `if TYPE_CHECKING:`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import methods`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports. An import of a module's own package (`from . import x`, which
    runs the package's __init__ before the module anyway) is not an edge."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = {}
    for path in paths:
        name = module_name(path)
        graph[name] = {module for module in imported_modules(path, modules) if not name.startswith(module + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting, done = [], set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for child in sorted(graph[node]):
            if (cycle := visit(child)) is not None:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    # The graph sees top-level, relative and deferred imports alike.
    assert "vit_accel.errors" in graph["vit_accel.adapters"] and "vit_accel.data" in graph["vit_accel.cli"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_modules_that_load_the_model_first_import_alone_in_a_fresh_process():
    # The Auto-class registration runs when the model module finishes loading (vit_accel.auto's import hook): what it
    # imports then must not lead back into the half-loaded module that imported the model (a cycle the static graph
    # above cannot see).
    import subprocess
    import sys

    for name in ("vit_accel.adapters", "vit_accel.training.resume", "vit_accel.modeling_vit_accel"):
        result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, (name, result.stderr[-2000:])
