"""Range locks (daxfs/fs/rangelock.py) and how truncate, punch-hole and zero-range
use them against direct I/O in flight: they wait (layout_timeout: EBUSY; nowait:
EAGAIN), new direct I/O to a range being truncated waits, and no I/O reads or
writes a freed block."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator

import pytest

from daxfs.errors import Busy, WouldBlock
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from daxfs.fs.direct import aligned_buffer
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.fs.mount import mkfs, mount
from daxfs.fs.rangelock import TO_END, RangeLock
from daxfs.testing.simblock import SimulatedBlockDevice
from tests.fs.direct_devices import HeldBlockDevice

SIZE = 16 << 20


def fill(n: int, seed: int) -> memoryview:
    buf = aligned_buffer(n)
    buf[:] = bytes([seed & 0xFF]) * n
    return memoryview(buf)


# -- the lock itself ------------------------------------------------------------------------


@pytest.fixture
def rl() -> tuple[threading.RLock, RangeLock]:
    lock = threading.RLock()
    return lock, RangeLock(threading.Condition(lock))


def test_shared_ranges_overlap_exclusive_ones_do_not(
    rl: tuple[threading.RLock, RangeLock],
) -> None:
    lock, ranges = rl
    with lock:
        a = ranges.lock(0, 100, False)
        b = ranges.lock(50, 150, False)  # shared with shared: granted
        c = ranges.lock(150, 200, True)  # exclusive, no overlap: granted
        assert ranges.held() == [(0, 100, False), (50, 150, False), (150, 200, True)]
        with pytest.raises(WouldBlock) as info:
            ranges.lock(99, 100, True, nowait=True)
        assert info.value.errno == errno.EAGAIN
        assert "[99, 100)" in str(info.value)
        with pytest.raises(Busy) as busy:
            ranges.lock(199, 300, False, timeout=0.01)
        assert busy.value.errno == errno.EBUSY
        assert "layout_timeout" in str(busy.value)
        for token in (a, b, c):
            ranges.unlock(token)
        assert not ranges


def test_waiters_are_granted_in_arrival_order(rl: tuple[threading.RLock, RangeLock]) -> None:
    """An exclusive waiter holds back later shared requests that overlap it."""
    lock, ranges = rl
    order: list[str] = []
    with lock:
        reader = ranges.lock(0, 10, False)

    def excl() -> None:
        with lock:
            token = ranges.lock(0, TO_END, True)
            order.append("truncate")
            ranges.unlock(token)

    def late_reader() -> None:
        with lock:
            token = ranges.lock(5, 6, False)
            order.append("reader")
            ranges.unlock(token)

    t1 = threading.Thread(target=excl)
    t1.start()
    _until(lambda: len(ranges._queue) == 2, lock)
    t2 = threading.Thread(target=late_reader)
    t2.start()
    _until(lambda: len(ranges._queue) == 3, lock)
    assert order == []  # the late reader does not pass the waiting truncate
    with lock:
        ranges.unlock(reader)
    t1.join(10)
    t2.join(10)
    assert order == ["truncate", "reader"]


def test_a_waiter_that_gives_up_lets_the_others_go(rl: tuple[threading.RLock, RangeLock]) -> None:
    lock, ranges = rl
    with lock:
        held = ranges.lock(0, 10, False)
    got: list[object] = []

    def behind() -> None:  # behind the exclusive waiter only, not behind the reader
        with lock:
            got.append(ranges.lock(0, 5, False))

    with lock:
        waiting = threading.Thread(target=behind)
        with pytest.raises(Busy):
            # while this one waits, ``behind`` queues after it
            waiting.start()
            ranges.lock(0, 10, True, timeout=0.2)
    waiting.join(10)
    assert len(got) == 1
    with lock:
        ranges.unlock(held)
        ranges.unlock(got[0])  # type: ignore[arg-type]
        assert not ranges


def _until(cond: object, lock: threading.RLock, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with lock:
            if cond():  # type: ignore[operator]
                return
        time.sleep(0.001)
    raise AssertionError("condition not reached")


# -- truncate, punch-hole and zero-range against direct I/O in flight ---------------------


@pytest.fixture
def held() -> Iterator[tuple[FileSystem, HeldBlockDevice, SimulatedBlockDevice]]:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    dev = HeldBlockDevice(disk)
    with mount(dev, layout_timeout=0.2) as fs:
        yield fs, dev, disk
    assert fsck(disk).clean


def test_truncate_waits_for_direct_io_in_flight(
    held: tuple[FileSystem, HeldBlockDevice, SimulatedBlockDevice],
) -> None:
    fs, dev, _ = held
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(fill(4 * BLOCK_SIZE, 1), 0)
        data = fill(2 * BLOCK_SIZE, 2)
        dev.hold(data.obj)
        fut = f.submit_write(BLOCK_SIZE, data)  # held in the device
        dev.wait_held(1)
        with pytest.raises(WouldBlock) as again:
            f.truncate(BLOCK_SIZE, nowait=True)
        assert again.value.errno == errno.EAGAIN
        assert "/f" in str(again.value)
        with pytest.raises(Busy) as busy:
            f.truncate(BLOCK_SIZE)  # layout_timeout of 0.2 s
        assert busy.value.errno == errno.EBUSY
        for mode in (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE):
            with pytest.raises(WouldBlock):
                f.fallocate(2 * BLOCK_SIZE, BLOCK_SIZE, mode, nowait=True)
        # outside the range: no wait
        f.truncate(3 * BLOCK_SIZE + 100)
        assert f.stat().st_size == 3 * BLOCK_SIZE + 100
        # a truncate that waits, then a new direct read of the range: it waits too
        done: list[str] = []

        def truncate() -> None:
            with fs.open("/f", "rb+", buffering=0) as g:
                g.truncate(BLOCK_SIZE)
            done.append("truncate")

        t = threading.Thread(target=truncate)
        fs.data.layout_timeout = 10.0
        t.start()
        _until(lambda: len(f.inode.layouts.ranges._queue) == 2, f.inode.lock)
        # (submit_read waits in the submitting thread for the range: run it in another)
        reads: list[int] = []
        r = threading.Thread(target=lambda: reads.append(f.preadinto(aligned_buffer(512), 4096)))
        r.start()
        time.sleep(0.05)
        assert reads == []
        assert done == []
        dev.release()
        assert fut.result(10) == 2 * BLOCK_SIZE
        t.join(10)
        assert done == ["truncate"]
        r.join(10)
        assert reads == [0]  # after the truncate: past the end of file
        assert f.stat().st_size == BLOCK_SIZE
        assert f.pread(BLOCK_SIZE, 0) == bytes(fill(BLOCK_SIZE, 1))


def test_buffered_write_over_direct_io_in_flight_waits(
    held: tuple[FileSystem, HeldBlockDevice, SimulatedBlockDevice],
) -> None:
    fs, dev, _ = held
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(fill(2 * BLOCK_SIZE, 1), 0)
        data = fill(BLOCK_SIZE, 2)
        dev.hold(data.obj)
        fut = f.submit_write(0, data)
        dev.wait_held(1)
        finished = threading.Event()

        def buffered() -> None:
            with fs.open("/f", "rb+", buffering=0) as g:
                g.pwrite(b"B" * 10, 5)
            finished.set()

        t = threading.Thread(target=buffered)
        t.start()
        assert not finished.wait(0.1)  # it waits for the direct write's range
        dev.release()
        fut.result(10)
        t.join(10)
        data = f.pread(BLOCK_SIZE, 0)
        assert data == bytes(fill(5, 2)) + b"B" * 10 + bytes(fill(BLOCK_SIZE - 15, 2))
        with fs.open("/f", "rb") as b:  # the cache agrees with the disk
            assert b.read(BLOCK_SIZE) == data
