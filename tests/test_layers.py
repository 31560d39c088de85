"""The house: imports point down the layers, no cycles, no function-level imports that hide one.

Read from the source with ``ast`` (nothing is imported), so a violation fails here before it bites at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("label_config", "trainer", "ls_backend")
# Lower first; a module may import its own layer and the layers below it.
LAYERS = ("label_config", "trainer.core", "trainer.explain", "trainer.data", "trainer.runs", "trainer.labelstudio",
          "trainer.app", "ls_backend")  # fmt: skip
# Where a function-level import of a project module is allowed: the CLI's command registration.
LAZY_ALLOWED = {"ls_backend.cli"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def _targets(node: ast.AST, module: str) -> list[str]:
    """Project modules an import statement names (``from pkg import mod`` counts as ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [n for alias in node.names if (n := f"{node.module}.{alias.name}") in MODULES] or [node.module]
    else:
        return []
    return [n for n in names if n.split(".")[0] in PACKAGES]


def imports(module: str) -> tuple[set[str], set[str]]:
    """(module-level imports, function-level imports) of project modules."""
    tree = ast.parse(MODULES[module].read_text())
    top, nested = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            (top if node in tree.body else nested).update(_targets(node, module))
    return top, nested


def layer(module: str) -> int:
    return max(i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + "."))


def test_every_module_sits_in_a_layer():
    for module in MODULES:
        if module != "trainer":
            layer(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "trainer"))
def test_imports_point_down_the_layers(module):
    top, nested = imports(module)
    up = sorted(t for t in top | nested if t != "trainer" and layer(t) > layer(module))
    assert not up, f"{module} (layer {LAYERS[layer(module)]}) imports a higher layer: {up}"
    if module not in LAZY_ALLOWED:
        assert not nested, f"{module} imports project modules inside a function: {sorted(nested)}"


def test_no_import_cycle():
    graph = {m: {t for t in imports(m)[0] if t in MODULES and t != m} for m in MODULES}
    done, stack = set(), []

    def visit(m: str) -> None:
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m) :] + [m]))
        if m in done:
            return
        stack.append(m)
        for t in sorted(graph[m]):
            visit(t)
        stack.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The graph reader sees both kinds of import (a check that cannot fail proves nothing)."""
    source = "from trainer.app.cli import main\n\ndef f():\n    from trainer.runs import run\n"
    path = tmp_path / "probe.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "trainer.core.probe", path)
    top, nested = imports("trainer.core.probe")
    assert top == {"trainer.app.cli"} and nested == {"trainer.runs.run"}
    assert layer("trainer.app.cli") > layer("trainer.core.probe")
