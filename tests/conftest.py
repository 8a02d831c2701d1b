"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.fs import _commit

SHM = Path("/dev/shm")


@pytest.fixture
def shm_path(tmp_path: Path) -> Iterator[Path]:
    """A path on /dev/shm (DRAM-backed tmpfs), removed afterwards."""
    if not SHM.is_dir():
        pytest.skip("/dev/shm is not available")
    path = SHM / f"daxfs-test-{os.getpid()}-{tmp_path.name}.img"
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def unplant() -> Iterator[None]:
    """No missing flush stays planted in the C commit after the test
    (``tests.helpers.missing_flush``)."""
    yield
    _commit.plant_missing_flush(0)
