"""Helpers shared by the tests of several layers: fresh images, full filesystems."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator

import daxfs
from daxfs.errors import NoSpace
from daxfs.fs import _commit
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.testing import SimulatedPmem

#: the smallest filesystem mkfs makes
SIZE = 16 << 20
#: the time the ``frozen`` fixture (tests/fs/conftest.py) stamps
CLOCK = 1_700_000_000_123_456_789


def formatted(size: int = SIZE, kind: type[SimulatedPmem] = SimulatedPmem) -> SimulatedPmem:
    """A new ``kind`` device of ``size`` bytes holding an empty filesystem."""
    device = kind(size)
    daxfs.mkfs(device)
    return device


def fresh_device(
    size: int = SIZE, kind: type[SimulatedPmem] = SimulatedPmem
) -> Iterator[SimulatedPmem]:
    """For a fixture (``yield from fresh_device()``): a formatted device, closed after the
    test, and the cycles that hold its images gone.

    A device still mounted (claimed) is a test that failed half-way: closing it
    may fail, and that says nothing new.  An unmounted device refuses to close
    while views of its memory are alive.  Views that only unreachable reference
    cycles hold (an exception kept with its traceback, whose frames held them)
    can never be used: they go with a collection, which must come before the
    close, not after it (whether the collector had run by then made such a
    teardown fail now and then).  Views still reachable once collected are a
    leak, and the teardown fails.
    """
    device = formatted(size, kind)
    yield device
    if getattr(device, "_claims", 0):
        with contextlib.suppress(BufferError):
            device.close()
    else:
        try:
            device.close()
        except BufferError:
            gc.collect()
            device.close()
    gc.collect()


def fill(fs: daxfs.FileSystem, leave: int = 0) -> None:
    """Write until exactly ``leave`` blocks are left to ordinary allocations (``f_bavail``).

    As a user would fill a disk: ``/fill`` grows by writes that halve on
    ENOSPC down to one block; the few blocks it cannot take (its extent map
    would need a tree node for them) go to ``/fill.pad``, one extent each in
    its inline map, which needs no node.  With ``fs.alloc.reserved = 0`` set
    first, not one block is left free.
    """
    fs.open("/fill.pad", "wb").close()  # first, while there is room for a new file
    chunk = 256
    with fs.open("/fill", "ab", buffering=0) as f:
        while (extra := fs.statvfs().f_bavail - leave) > 0 and chunk:
            try:
                f.write(bytes(min(chunk, extra) * BLOCK_SIZE))
            except NoSpace:
                chunk //= 2
    with fs.open("/fill.pad", "rb+", buffering=0) as f:
        k = 0
        while (extra := fs.statvfs().f_bavail - leave) > 0:
            assert k < 5, f"{extra} blocks left that /fill could not take"
            f.pwrite(b"p" * BLOCK_SIZE, 2 * k * BLOCK_SIZE)
            k += 1
    assert fs.statvfs().f_bavail == leave


def missing_flush(
    n: int, op: Callable[[daxfs.FileSystem], object]
) -> Callable[[daxfs.FileSystem], None]:
    """``op`` run with the n-th device write of the C commit left unflushed
    (``_commit.plant_missing_flush``; 0 plants nothing), unplanted after, so that a
    crash test of it shows whether the simulator sees the C commit's stores.  The
    ``unplant`` fixture (tests/conftest.py) unplants after a test that raised."""

    def planted(fs: daxfs.FileSystem) -> None:
        _commit.plant_missing_flush(n)
        try:
            op(fs)
        finally:
            _commit.plant_missing_flush(0)

    return planted
