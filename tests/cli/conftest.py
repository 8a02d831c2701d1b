"""Fixtures of the CLI tests."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SHM = Path("/dev/shm")


@pytest.fixture
def shm_dir(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory on /dev/shm (DRAM: images there cost no disk writeback),
    removed afterwards (by rm -rf: shutil.rmtree recurses, and some trees here
    are deeper than Python's recursion limit); tmp_path where there is no /dev/shm."""
    if not SHM.is_dir():
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="daxfs-cli-", dir=SHM))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", "--", str(path)], check=False)
