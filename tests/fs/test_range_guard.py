"""Where the data path takes range locks (review leftovers): a buffered write locks its
range only on a mount where direct I/O can hold one (block-backed), and prepare_map
builds its plan of holes and unwritten extents once, again only after it waited."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import daxfs
from daxfs.fs.data import DataPath
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.testing import SimulatedPmem
from tests import helpers


@pytest.fixture
def dev() -> Iterator[SimulatedPmem]:
    yield from helpers.fresh_device(16 << 20)


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of DataPath.<name>; the list's length is the count."""
    calls: list[int] = []
    real = getattr(DataPath, name)

    def spy(self: DataPath, *args: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(self, *args, **kw)

    monkeypatch.setattr(DataPath, name, spy)
    return calls


def with_layouts(fs: FileSystem, path: str) -> None:
    """``path`` holds 2 blocks and has had a pin (so its inode has Layouts and a range
    lock from then on)."""
    with fs.open(path, "wb+", buffering=0) as f:
        f.write(b"x" * 2 * BLOCK_SIZE)
        f.pin(0, BLOCK_SIZE).unpin()
    inode, _ = fs._existing(path)
    assert inode.layouts is not None


def test_buffered_writes_on_dax_take_no_range_lock(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch
) -> None:
    with daxfs.mount(dev) as fs:
        assert fs.direct is None
        assert not fs.data.direct_io
        with_layouts(fs, "/f")
        locks = counting(monkeypatch, "lock_range")
        with fs.open("/f", "rb+", buffering=0) as f:
            f.pwrite(b"y" * 3 * BLOCK_SIZE, BLOCK_SIZE + 5)  # grows: off the fast path
            f.pwrite(b"z" * 100, 10 * BLOCK_SIZE)  # into a hole
        assert locks == []
        with fs.open("/f", "rb") as f:
            assert f.read(BLOCK_SIZE + 5) == b"x" * BLOCK_SIZE + b"x" * 5
            assert f.read(3 * BLOCK_SIZE) == b"y" * 3 * BLOCK_SIZE


def test_buffered_writes_on_a_block_mount_lock_their_range(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch
) -> None:
    with daxfs.mount(dev, dax="never") as fs:
        assert fs.data.direct_io
        with_layouts(fs, "/f")
        locks = counting(monkeypatch, "lock_range")
        with fs.open("/f", "rb+", buffering=0) as f:
            f.pwrite(b"y" * 3 * BLOCK_SIZE, BLOCK_SIZE + 5)
        assert len(locks) >= 1


def test_prepare_map_plans_once(dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch) -> None:
    with daxfs.mount(dev) as fs:
        with_layouts(fs, "/f")  # a range lock to take
        fs.truncate("/f", 8 * BLOCK_SIZE)  # holes to allocate
        plans = counting(monkeypatch, "_plan")
        with fs.open("/f", "rb+", buffering=0) as f, f.mmap() as m:
            m[5 * BLOCK_SIZE] = 7
        assert len(plans) == 1
        with fs.open("/f", "rb", buffering=0) as f:
            assert f.pread(1, 5 * BLOCK_SIZE) == b"\x07"


def test_prepare_map_plans_again_after_waiting(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A range lock held elsewhere: prepare_map waits (the inode lock released, so the
    map may change meanwhile), then plans again and maps what is there then."""
    with daxfs.mount(dev) as fs:
        with_layouts(fs, "/f")
        fs.truncate("/f", 8 * BLOCK_SIZE)
        inode, _ = fs._existing("/f")
        with inode.lock:
            token = fs.data.lock_range(inode, 0, 8 * BLOCK_SIZE)
        plans = counting(monkeypatch, "_plan")
        errors: list[BaseException] = []

        def mapper() -> None:
            try:
                with fs.open("/f", "rb+", buffering=0) as f, f.mmap() as m:
                    m[6 * BLOCK_SIZE] = 9
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=mapper)
        thread.start()
        while True:  # until it waits in the range lock (inode.lock released)
            with inode.lock:
                layouts = inode.layouts
                assert layouts is not None
                if len(layouts.ranges._queue) > 1:
                    break
            thread.join(0.01)
        with inode.lock:
            fs.data.unlock_range(inode, token)
        thread.join()
        assert errors == []
        assert len(plans) == 2
        with fs.open("/f", "rb", buffering=0) as f:
            assert f.pread(1, 6 * BLOCK_SIZE) == b"\x09"
