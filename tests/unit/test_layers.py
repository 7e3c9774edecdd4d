"""The package's layers, checked: a lower layer never imports a higher one, and no module grows
past what one reader can hold (the layout is the architecture; see src/berth/__init__.py)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "berth"

RANK = {
    "_exceptions": 0, "_paths": 0, "_version": 0,
    "_linux": 1,
    "_core": 2,
    "_runtimes": 3,
    "_storm": 4,
    "_node": 5,
    "_service": 6,
    "_cluster": 7,
    "_cli": 8,
    "__init__": 9, "__main__": 9,
}
MAX_LINES = 420
STDLIB_ONLY: tuple[str, ...] = tuple(str(p.relative_to(SRC))
                                     for p in sorted((SRC / "_runtimes" / "runc" / "shim").glob("*.py")))
"""Modules that must import nothing outside the standard library: the runc monitor (berth-shim),
which runs as its own program loaded from its directory alone."""


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _layer_of(target: list[str]) -> str:
    """The layer a module path inside ``berth`` names; the package itself is ``__init__``."""
    return target[0].removesuffix(".py") if target else "__init__"


def _imported_layers(path: Path, source: str | None = None) -> set[tuple[str, int]]:
    """Every berth layer this module (or ``source``, as if it were this module) imports, with the
    line of the import."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    package = path.relative_to(SRC).parent.parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
            elif node.module == "berth" or (node.module or "").startswith("berth."):
                base = []
            else:
                continue
            target = base + (node.module.split(".")[0 if node.level else 1:] if node.module else [])
            if not target:  # "from berth import x" / "from .. import x": a layer, or the package's top
                for alias in node.names:
                    found.add((alias.name if alias.name in RANK else "__init__", node.lineno))
                continue
            found.add((_layer_of(target), node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "berth":
                    found.add((_layer_of(parts[1:]), node.lineno))
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_a_module_imports_only_its_own_layer_and_those_below(path: Path) -> None:
    mine = _layer(path)
    assert mine in RANK, f"{path}: a new top-level package or module; give it a rank in RANK"
    for layer, line in _imported_layers(path):
        assert layer in RANK, f"{path}:{line}: imports unknown berth module {layer!r}"
        assert RANK[layer] <= RANK[mine], (f"{path.relative_to(SRC)}:{line}: {mine} (rank {RANK[mine]}) imports "
                                           f"{layer} (rank {RANK[layer]}), a higher layer")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_is_longer_than_a_reader_can_hold(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines (at most {MAX_LINES}): split it"


def test_every_layer_package_says_what_it_may_import() -> None:
    for pkg in (p for p in SRC.iterdir() if p.is_dir() and p.name.startswith("_") and p.name != "__pycache__"):
        doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{pkg.name}/__init__.py needs a docstring saying what it may import"


def test_stdlib_only_modules() -> None:
    for module in STDLIB_ONLY:
        tree = ast.parse((SRC / module).read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names | {"__future__"}, f"{module} imports {name}"
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{module} imports from outside its package ({'.' * node.level}{node.module})"
    assert len(STDLIB_ONLY) >= 4  # the shim's modules were found


def test_the_walker_finds_relative_and_absolute_imports() -> None:
    """The walker finds relative and absolute imports (else the tests above would pass vacuously)."""
    found = {layer for layer, _ in _imported_layers(SRC / "_node" / "node.py")}
    assert {"_core", "_runtimes", "_exceptions"} <= found
    found = {layer for layer, _ in _imported_layers(SRC / "__init__.py")}
    assert {"_service", "_node", "_core"} <= found


@pytest.mark.parametrize(("source", "layer"), [
    ("from .._node.node import Node", "_node"),
    ("from .. import _service", "_service"),
    ("from ..import Node", "__init__"),
    ("from berth._cli import main", "_cli"),
    ("from berth import Node", "__init__"),
    ("import berth", "__init__"),
    ("import berth._cluster.agent", "_cluster"),
    ("def f():\n    from .._runtimes import fake", "_runtimes"),
])
def test_the_walker_sees_every_form_of_import(source: str, layer: str) -> None:
    """A module of ``_core`` that imports in any of these forms imports ``layer``; the package's top
    (``import berth``, ``from berth import Node``) is the highest layer of all, since it imports every one."""
    assert {found for found, _ in _imported_layers(SRC / "_core" / "spec.py", source)} == {layer}
