"""The layer map in ``poolkit/__init__.py``'s docstring is the truth about imports.

Every module of the package is on the map exactly once; a module imports only from its own line
of the map or from lines above it; and no modules import each other, not even through an import
inside a function (the way a cycle is usually hidden).  Imports under ``if TYPE_CHECKING:`` are
for annotations only and run nowhere, so they are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import poolkit

PACKAGE = Path(poolkit.__file__).parent


def _map_lines() -> list[list[str]]:
    """The map's lines, bottom layer first: each line is the modules it names."""
    doc = poolkit.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    lines = []
    for text in block.splitlines():
        if not text.startswith("    ") or text.startswith("     "):
            continue  # a continuation of the line above
        names = text.strip().split("  ", 1)[0]
        lines.append([name.strip() for name in names.split(",") if name.strip()])
    return lines


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The package modules an import names (``from . import x`` may name module ``x``)."""
    if node.level == 0:
        if node.module is None or not node.module.startswith("poolkit"):
            return []
        base = node.module.split(".")[1:]
    else:
        here = module.split(".")[:-1] if module != "__init__" else []
        here = here[: len(here) - (node.level - 1)] if node.level > 1 else here
        base = here + (node.module.split(".") if node.module else [])
    target = ".".join(base) or "__init__"
    known = _modules()
    found = []
    if node.module is None or target in known or target == "__init__":
        for alias in node.names:  # ``from . import leaks`` names a module
            sub = ".".join([*base, alias.name])
            if sub in known:
                found.append(sub)
    if not found:
        found.append(target if target in known else f"{target}.__init__")
    return [name for name in found if name in known]


def _imports(module: str, path: Path) -> set[str]:
    """The package modules ``module`` imports at run time, wherever the import statement is."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for inner in node.body:
                skipped.update(id(n) for n in ast.walk(inner))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            found.update(_resolve(module, node))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("poolkit."):
                    name = alias.name.split(".", 1)[1]
                    if name in _modules():
                        found.add(name)
    found.discard(module)
    return found


def test_every_module_is_on_the_map_once() -> None:
    on_map = [name for line in _map_lines() for name in line]
    assert len(on_map) == len(set(on_map)), f"named twice: {on_map}"
    assert sorted(on_map) == sorted(_modules()), (
        f"missing from the map: {sorted(set(_modules()) - set(on_map))}; "
        f"on the map but not in the package: {sorted(set(on_map) - set(_modules()))}"
    )


def test_no_module_imports_from_a_layer_above_it() -> None:
    layer = {name: i for i, line in enumerate(_map_lines()) for name in line}
    wrong = [
        f"{module} (line {layer[module] + 1}) imports {target} (line {layer[target] + 1})"
        for module, path in _modules().items()
        if module in layer  # (one that is not is reported by the test above)
        for target in sorted(_imports(module, path))
        if target in layer and layer[target] > layer[module]
    ]
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_cycle() -> None:
    graph = {module: _imports(module, path) for module, path in _modules().items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from . import _wait\nfrom ._channel import Channel\n", {"_wait", "_channel"}),
        ("def f():\n    from ._blocked import find_blocked\n", {"_blocked"}),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._pool import Job\n",
            set(),
        ),
        ("import poolkit._limiter\n", {"_limiter"}),
    ],
)
def test_the_import_reader_sees_what_a_module_imports(
    tmp_path: Path, source: str, expected: set[str]
) -> None:
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert _imports("probe", path) == expected
