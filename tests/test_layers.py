"""The layering rule of docs/ARCHITECTURE.md: imports point down, never up."""

from __future__ import annotations

import ast
from pathlib import Path

import daxfs

PACKAGE = Path(daxfs.__file__).parent

# rank of each layer; a module may import only from layers of lower or equal rank
RANKS = {
    "errors": 0,
    "lifecycle": 0,
    "pmem": 1,
    "block": 2,
    "iomap": 3,
    "pagecache": 4,
    "fs": 5,
    "mm": 6,
    "testing": 7,
    "cli": 8,
    "fuse": 8,
    "fsspec": 8,
    "": 9,  # daxfs/__init__.py: the public API
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "daxfs"
    return parts[1] if len(parts) > 1 else ""


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        found.append((name, path))
    return found


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n == "daxfs" or n.startswith("daxfs.")}


def test_every_layer_is_known() -> None:
    for name, _ in modules():
        assert layer_of(name) in RANKS, f"{name}: layer {layer_of(name)!r} has no rank"


def test_imports_point_down() -> None:
    violations = []
    for name, path in modules():
        own = RANKS[layer_of(name)]
        violations += [f"{name} imports {t}" for t in imported(path) if RANKS[layer_of(t)] > own]
    assert violations == []


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from daxfs.cli import main\n")
    assert imported(bad) == {"daxfs.cli"}
    assert RANKS[layer_of("daxfs.cli")] > RANKS[layer_of("daxfs.pmem.cpu")]
