"""examples/pool.py: raw pointers survive runs at a fixed address, and relocation works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pool.py"

OCCUPY = """
import runpy, sys
from daxfs.mm import _vm
_vm.mmap(0x7E0000000000, 1 << 20, 1, _vm.MAP_PRIVATE | _vm.MAP_ANONYMOUS
         | _vm.MAP_FIXED_NOREPLACE, -1, 0)  # someone else holds the preferred address
sys.argv = ["pool", sys.argv[1]]
runpy.run_path({example!r}, run_name="__main__")
"""


def run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=True, timeout=60
    )
    return proc.stdout


def test_pool_keeps_its_pointers_across_runs(tmp_path: Path) -> None:
    image = str(tmp_path / "pool.pmem")
    first = run(str(EXAMPLE), image)
    assert "mapped at the preferred address" in first
    assert "list (newest first): [1]" in first
    second = run(str(EXAMPLE), image)
    assert "mapped at the preferred address" in second
    assert "list (newest first): [2, 1]" in second
    taken = run("-c", OCCUPY.format(example=str(EXAMPLE)), image)
    assert "preferred address taken" in taken
    assert "relocated 2 pointers" in taken
    assert "list (newest first): [3, 2, 1]" in taken
    back = run(str(EXAMPLE), image)
    assert "relocated 3 pointers" in back
    assert "list (newest first): [4, 3, 2, 1]" in back
