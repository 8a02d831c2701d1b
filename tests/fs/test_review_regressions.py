"""Regressions found by review on 2026-11-28, each failing before its fix:

- a direct read whose mapping lookup fails gives its range lock back (it kept it, so a
  later truncate got EAGAIN/EBUSY and a buffered write of the range waited forever);
- a File closed by the cyclic collector leaves no entry in the mount's open files;
- cache_size on a DAX mount is EINVAL whatever the size (it was ENOMEM when large).
"""

from __future__ import annotations

import errno
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

import daxfs
from daxfs.errors import InvalidArgument
from daxfs.fs.direct import aligned_buffer
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.block_tests import pattern
from daxfs.testing.simblock import SimulatedBlockDevice

MIB = 1 << 20


@pytest.fixture
def fs() -> Iterator[FileSystem]:
    dev = SimulatedBlockDevice(16 * MIB)
    mkfs(dev)
    with mount(dev) as fs:
        yield fs


def failing_iomap_begin(fs: FileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    def iomap_begin(*args: object, **kwargs: object) -> object:
        raise OSError(errno.EIO, "the extent map cannot be read")

    monkeypatch.setattr(fs.data, "iomap_begin", iomap_begin)


@pytest.mark.parametrize("call", ["preadinto", "preadinto_many"])
def test_a_direct_read_that_cannot_map_gives_its_range_back(
    fs: FileSystem, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        data = memoryview(aligned_buffer(4 * BLOCK_SIZE))
        data[:] = pattern(4 * BLOCK_SIZE, 3)
        f.pwrite(data, 0)
        with monkeypatch.context() as m:
            failing_iomap_begin(fs, m)
            buf = memoryview(aligned_buffer(2 * BLOCK_SIZE))
            with pytest.raises(OSError, match="cannot be read") as info:
                if call == "preadinto":
                    f.preadinto(buf, 0)
                else:
                    f.preadinto_many([(0, buf[:BLOCK_SIZE]), (BLOCK_SIZE, buf[BLOCK_SIZE:])])
            assert info.value.errno == errno.EIO
        # no range is left held: truncate does not wait, a write of the range goes on
        fs.truncate("/f", BLOCK_SIZE, nowait=True)
        data[:BLOCK_SIZE] = pattern(BLOCK_SIZE, 4)
        f.pwrite(data[:BLOCK_SIZE], 0)
        assert f.preadinto(buf, 0) == BLOCK_SIZE
        assert bytes(buf[:BLOCK_SIZE]) == pattern(BLOCK_SIZE, 4)


def test_a_file_closed_by_the_cyclic_collector_leaves_no_entry(fs: FileSystem) -> None:
    before = len(fs._files)
    gc.disable()
    try:
        for i in range(20):
            f = fs.open(f"/c{i}", "wb")
            cycle: list[object] = [f]
            cycle.append(cycle)
            del f, cycle
    finally:
        gc.enable()
    gc.collect()
    assert fs.open_files() == []
    assert len(fs._files) == before


def test_cache_size_on_a_dax_mount_is_einval_whatever_its_size(shm_path: Path) -> None:
    daxfs.mkfs(shm_path, 16 * MIB)
    for size in ("1M", "1T"):
        with pytest.raises(InvalidArgument, match="cache_size is for a block-backed mount"):
            daxfs.mount(shm_path, cache_size=size)
    with daxfs.mount(shm_path, dax="never", cache_size="1M") as fs:  # where it is of use
        assert fs.listdir("/") == []
