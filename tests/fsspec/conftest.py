"""Fixtures of the fsspec front end's tests: a fresh image on /dev/shm per test, or a
DaxFileSystem over a mounted simulated device."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import daxfs

fsspec = pytest.importorskip("fsspec", reason="fsspec is not installed (pip install -e .[dev])")

from daxfs.fs.filesystem import FileSystem  # noqa: E402
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


_serial = itertools.count()


@pytest.fixture
def over(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[FileSystem], DaxFileSystem]]:
    """A DaxFileSystem over an already mounted FileSystem (a simulated device's: the
    crash and fault tests), instead of one that mounts an image by its path."""
    made: list[str] = []

    def make(fs: FileSystem) -> DaxFileSystem:
        monkeypatch.setattr(_mounts, "mount", lambda *args, **kwargs: fs)
        image = f"/nonexistent/simulated-{next(_serial)}.img"
        made.append(_mounts.image_key(image))
        return DaxFileSystem(image, skip_instance_cache=True)

    yield make
    for key in made:  # their devices failed: drop the entries, unmount nothing
        _mounts._TABLE.pop(key, None)
