"""The Python examples in README.md run as written (paths moved to a temporary directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, shm_path: Path) -> None:
    folder = shm_path.parent / f"{shm_path.name}.d"
    folder.mkdir()
    try:
        code = BLOCKS[index].replace("/dev/shm/", f"{folder}/")
        exec(compile(code, f"README.md example {index + 1}", "exec"), {})
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
