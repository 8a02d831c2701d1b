"""Fixtures of the fsspec front end's tests: a fresh image on /dev/shm per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import daxfs

fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed (pip install -e .[dev])")

from daxfs.fsspec import DaxFileSystem, _mounts, mounted  # noqa: E402

#: the tests' images: small (mkfs's minimum is 16 MiB), emulated pmem on /dev/shm
IMAGE_SIZE = 32 << 20


@pytest.fixture
def image(shm_path: Path) -> Iterator[str]:
    """A new empty daxfs image; afterwards, nothing of it is still mounted."""
    daxfs.mkfs(shm_path, IMAGE_SIZE)
    yield str(shm_path)
    leftover = mounted()
    _mounts.release_all()  # a test that failed half-way may leave its mount and files
    DaxFileSystem.clear_instance_cache()
    assert mounted() == []
    assert str(shm_path) not in leftover, "the test left its image mounted"


@pytest.fixture
def dfs(image: str) -> Iterator[DaxFileSystem]:
    """The image through fsspec (CPU flushes: the image is on DRAM anyway)."""
    fs = DaxFileSystem(image, persist="cpu")
    yield fs
    fs.unmount()
    assert image not in mounted()
