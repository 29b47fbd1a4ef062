"""The layer map in ``poolkit/__init__.py``'s docstring is the truth about imports and folders.

Modules are named by their dotted path inside the package (``_core._wait``); a sub-package is
named by itself (``_core``, its ``__init__``), and importing a module imports the packages that
hold it.  Every module of the package is on the map exactly once; a module imports only from its
own line of the map or from lines above it; and no modules import each other, not even through
an import inside a function (the way a cycle is usually hidden).  Imports under
``if TYPE_CHECKING:`` are for annotations only and run nowhere, so they are left out.  The folder
tree is the map: every private module lives in a layer's sub-package, the sub-package's own line
opens its layer, and two layers' lines never interleave.
"""

from __future__ import annotations

import ast
import os
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
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if len(parts) > 1 and parts[-1] == "__init__":
        parts = parts[:-1]  # a sub-package is named by itself
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_package(module: str) -> bool:
    path = _modules().get(module)
    return path is not None and path.name == "__init__.py"


def _with_packages(names: list[str]) -> set[str]:
    """``names`` and the sub-packages that hold them: importing ``_core._wait`` runs ``_core``."""
    found = set(names)
    for name in names:
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return found & set(_modules())


def _resolve(module: str, node: ast.ImportFrom) -> set[str]:
    """The package modules an import names (``from . import x`` may name module ``x``)."""
    if node.level == 0:
        if node.module is None or not node.module.startswith("poolkit"):
            return set()
        base = node.module.split(".")[1:]
    else:
        here = [] if module == "__init__" else module.split(".")
        if not _is_package(module):
            here = here[:-1]  # a module's package; a package is its own
        here = here[: len(here) - (node.level - 1)]
        base = here + (node.module.split(".") if node.module else [])
    target = ".".join(base) or "__init__"
    known = _modules()
    found = []
    if node.module is None or target in known:
        for alias in node.names:  # ``from . import leaks`` names a module
            sub = ".".join([*base, alias.name])
            if sub in known:
                found.append(sub)
    if not found and target in known:
        found.append(target)
    return _with_packages(found)


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
                    found.update(_with_packages([alias.name.split(".", 1)[1]]))
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


def test_the_folder_tree_is_the_map() -> None:
    lines = _map_lines()
    flat = [
        name
        for name in _modules()
        if "." not in name and name.startswith("_") and not name.startswith("__")
        if not _is_package(name)
    ]
    assert not flat, f"private modules outside a layer's sub-package: {flat}"
    packages = [name for name in _modules() if "." not in name and _is_package(name)]
    assert packages, "no layer sub-packages found"
    for package in packages:

        def inside(name: str, package: str = package) -> bool:
            return name == package or name.startswith(f"{package}.")

        rows = [i for i, line in enumerate(lines) if any(inside(name) for name in line)]
        first, last = min(rows), max(rows)
        assert lines[first] == [package], f"{package}'s own line must open its layer"
        strangers = [name for line in lines[first : last + 1] for name in line if not inside(name)]
        assert not strangers, f"{package}'s layer is interleaved with {strangers}"


def test_the_package_directory_is_poolkit_s_root() -> None:
    # Every frame from a file under it counts as poolkit's own (origins, dumps' library frames),
    # wherever in the tree its module sits.
    from poolkit._core._registry import PACKAGE_DIR

    assert str(PACKAGE) + os.sep == PACKAGE_DIR


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "probe",
            "from ._core import _wait\nfrom ._primitives._channel import Channel\n",
            {"_core", "_core._wait", "_primitives", "_primitives._channel"},
        ),
        (
            "probe",
            "def f():\n    from ._leaks._blocked import find_blocked\n",
            {"_leaks", "_leaks._blocked"},
        ),
        (
            "probe",
            "import typing\nif typing.TYPE_CHECKING:\n    from ._pools._pool import Job\n",
            set(),
        ),
        ("probe", "import poolkit._primitives._limiter\n", {"_primitives", "_primitives._limiter"}),
        ("_pools._pool", "from .._core._wait import resolve\n", {"_core", "_core._wait"}),
        ("_pools._pool", "from poolkit._core._wait import resolve\n", {"_core", "_core._wait"}),
        ("_pools._pool", "from ._map import map_async\n", {"_pools", "_pools._map"}),
        (
            "_primitives._composite",
            "from . import _limiter\n",
            {"_primitives", "_primitives._limiter"},
        ),
        ("_tools._cli", "from .. import __version__\n", {"__init__"}),
        ("_tools._cli", "from poolkit import __version__\n", {"__init__"}),
        ("_core", "from . import _checks\n", {"_core._checks"}),
    ],
)
def test_the_import_reader_sees_what_a_module_imports(
    tmp_path: Path, module: str, source: str, expected: set[str]
) -> None:
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert _imports(module, path) == expected
