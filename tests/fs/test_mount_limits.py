"""The limits mount checks (daxfs.fs.devices, "Limits"): cache_size against MemAvailable
and its minimum, the whole-device cache against MemAvailable, the queue depth's bounds.
Each is errno-exact, names the value and the limit, and leaves nothing open."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import daxfs
from daxfs.block import cache as block_cache
from daxfs.block import open_block
from daxfs.block.engine import MAX_QUEUE_DEPTH, ThreadPoolEngine
from daxfs.errors import InvalidArgument
from daxfs.pagecache import cache as page_cache
from daxfs.testing import SimulatedBlockDevice, SimulatedPmem

SIZE = 32 << 20


@pytest.fixture
def image(shm_path: Path) -> Path:
    daxfs.mkfs(shm_path, SIZE)
    return shm_path


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def available(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """MemAvailable reads as ``n`` bytes (both modules that ask for it)."""
    monkeypatch.setattr(block_cache, "memory_available", lambda: n)
    monkeypatch.setattr(page_cache, "memory_available", lambda: n)


def test_cache_size_above_memavailable_is_enomem_before_anything_opens(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    available(monkeypatch, 8 << 20)
    before = open_fds()
    with pytest.raises(OSError, match="16777216 bytes is more than the 8388608 bytes") as info:
        daxfs.mount(image, dax="never", cache_size="16M")
    assert info.value.errno == errno.ENOMEM
    assert info.value.filename == str(image)
    assert open_fds() == before
    # checked first: a missing image is not even looked at
    with pytest.raises(OSError, match="memory available") as missing:
        daxfs.mount(tmp_path / "missing.img", dax="never", cache_size="16M")
    assert missing.value.errno == errno.ENOMEM
    with daxfs.mount(image, dax="never", cache_size="4M") as fs:  # within it: mounts
        assert fs.listdir("/") == []


def test_cache_size_below_the_minimum_or_not_a_size_is_einval(image: Path) -> None:
    for bad, said in (("4K", "4096 bytes is below the minimum 65536"), ("lots", "not a size")):
        with pytest.raises(InvalidArgument, match=said) as info:
            daxfs.mount(image, dax="never", cache_size=bad)
        assert info.value.errno == errno.EINVAL


def test_a_whole_device_cache_above_memavailable_is_enomem(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    available(monkeypatch, 16 << 20)
    before = open_fds()
    with pytest.raises(OSError, match=f"is {SIZE} bytes, more than the 16777216 bytes") as info:
        daxfs.mount(image, dax="never")
    assert info.value.errno == errno.ENOMEM
    assert open_fds() == before
    with daxfs.mount(image, dax="never", cache_size="1M") as fs:  # bounded instead: fits
        assert fs.listdir("/") == []


@pytest.mark.parametrize("bad", [0, -1, MAX_QUEUE_DEPTH + 1, 1 << 40, True, "8", 8.0])
def test_queue_depth_out_of_bounds_is_einval_naming_both(image: Path, bad: object) -> None:
    before = open_fds()
    with pytest.raises(InvalidArgument, match=f"from 1 to 4096, not {bad!r}") as info:
        daxfs.mount(image, dax="never", queue_depth=bad)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
    assert open_fds() == before


def test_queue_depth_reaches_the_engine(image: Path) -> None:
    for depth in (1, 4, MAX_QUEUE_DEPTH):
        with daxfs.mount(image, dax="never", queue_depth=depth) as fs:
            assert f"queue depth {depth})" in fs.device.bdev.engine  # type: ignore[attr-defined]
            fs.mkdir(f"/d{depth}")
    with daxfs.mount(image, dax="never") as fs:
        assert "queue depth 8)" in fs.device.bdev.engine  # type: ignore[attr-defined]


def test_queue_depth_where_no_queue_is_made_is_einval(image: Path) -> None:
    for target, dax in ((image, "inode"), (image, "always")):
        with pytest.raises(InvalidArgument, match="queue_depth is for an image opened as a"):
            daxfs.mount(target, dax=dax, queue_depth=4)
    pmem = SimulatedPmem(SIZE)
    daxfs.mkfs(pmem)
    disk = SimulatedBlockDevice(SIZE)
    daxfs.mkfs(disk)
    for device in (pmem, disk):  # objects come with their own queue, or none
        with pytest.raises(InvalidArgument, match="has no queue of daxfs's"):
            daxfs.mount(device, dax="never", queue_depth=4)
        with daxfs.mount(device, dax="never") as fs:  # nothing was claimed
            assert fs.listdir("/") == []


def test_every_engine_has_the_same_bound(tmp_path: Path) -> None:
    """ "auto" no longer falls back to threads over a queue depth io_uring refuses: the
    bound is checked before any engine is made, and the thread pool keeps it too."""
    with pytest.raises(InvalidArgument, match="from 1 to 4096"):
        open_block(tmp_path / "d.img", 1 << 20, create=True, queue_depth=MAX_QUEUE_DEPTH + 1)
    with pytest.raises(InvalidArgument, match="from 1 to 4096"):
        ThreadPoolEngine(MAX_QUEUE_DEPTH + 1)
    from daxfs.block import uring

    if uring._uring is not None:
        assert uring._uring.MAX_ENTRIES == MAX_QUEUE_DEPTH
