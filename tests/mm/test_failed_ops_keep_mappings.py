"""A failed truncate, punch-hole or zero-range leaves live mappings alone (issue 8).

Pages over blocks that an operation frees or changes are detached from every
mapping, but only once nothing but the commit can fail, and mapped back if
the commit fails before its commit point.  Each test makes one operation fail
(ENOSPC, EIO at a fence, EBUSY or EAGAIN on a pin) with a read-only and a
writable mapping live, then checks that both still show the file's bytes and
that a store through the writable one reaches the file.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

import pytest

import daxfs
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from daxfs.fs.fsck import fsck
from daxfs.testing import SimulatedPmem
from daxfs.testing.faults import FlakyPmem
from tests import helpers

BLOCK = 4096
SIZE = 16 << 20
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
ZERO = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE


MESSAGES = {
    errno.ENOSPC: "cannot allocate",
    errno.EIO: "simulated device error",
    errno.EBUSY: "are pinned",
    errno.EAGAIN: "are pinned",
}


@pytest.fixture
def dev() -> Iterator[SimulatedPmem]:
    """A device whose next fence fails once with EIO when ``fail_next`` is set."""
    yield from helpers.fresh_device(SIZE, FlakyPmem)


def five_extents(fs: daxfs.FileSystem) -> bytes:
    """/f: 64 blocks of data with one-block holes at blocks 1, 3, 5, 7 (a full inline map)."""
    data = bytearray(bytes(range(1, 256)) * (64 * BLOCK // 255 + 1))[: 64 * BLOCK]
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(data)
        for block in (1, 3, 5, 7):
            f.fallocate(block * BLOCK, BLOCK, PUNCH)
            data[block * BLOCK : (block + 1) * BLOCK] = bytes(BLOCK)
    return bytes(data)


def fill(fs: daxfs.FileSystem) -> None:
    """Not one block left, the reserve included."""
    fs.alloc.reserved = 0
    helpers.fill(fs)


#: the writable mapping covers the last extent only (it would fill the holes before it)
WRITE_AT = 8 * BLOCK


def check_mappings_intact(f: daxfs.fs.file.File, data: bytes, read: object, write: object) -> None:
    """Both mappings show the file; a store through the writable one reaches it."""
    assert f.pread(len(data), 0) == data  # the failed operation changed nothing
    assert read[0 : len(data)] == data  # type: ignore[index]
    assert write[0 : len(data) - WRITE_AT] == data[WRITE_AT:]  # type: ignore[index]
    write[40 * BLOCK - WRITE_AT : 40 * BLOCK - WRITE_AT + 6] = b"stored"  # type: ignore[index]
    assert f.pread(6, 40 * BLOCK) == b"stored"
    assert read[40 * BLOCK : 40 * BLOCK + 6] == b"stored"  # type: ignore[index]


def run_failing(
    dev: SimulatedPmem,
    prepare: Callable[[daxfs.FileSystem], None],
    op: Callable[[daxfs.fs.file.File], None],
    errnum: int,
    layout_timeout: float = 10.0,
    release: Callable[[], None] = lambda: None,
) -> None:
    fs = daxfs.mount(dev, layout_timeout=layout_timeout)
    data = five_extents(fs)
    f = fs.open("/f", "rb+", buffering=0)
    read = f.mmap(access="read")
    write = f.mmap(WRITE_AT, access="write")
    assert len(list(fs.maps.extents(fs.store, f.inode))) == 5
    prepare(fs)
    with pytest.raises(OSError, match=MESSAGES[errnum]) as info:
        op(f)
    assert info.value.errno == errnum
    assert info.value.filename == "/f"
    check_mappings_intact(f, data, read, write)
    if fs.exists("/fill"):
        fs.unlink("/fill")  # room for the write below
    f.pwrite(b"hole", 3 * BLOCK)  # a hole the read mapping shows as the zero page ...
    assert read[3 * BLOCK : 3 * BLOCK + 4] == b"hole"  # ... then as the new block
    read.close()
    write.close()
    f.close()
    release()
    fs.unmount()
    report = fsck(dev)
    assert report.clean, str(report)


def test_punch_that_fails_with_enospc(dev: SimulatedPmem) -> None:
    """The issue's case: the punch needs a tree node, and there is none."""
    run_failing(dev, fill, lambda f: f.fallocate(40 * BLOCK, BLOCK, PUNCH), errno.ENOSPC)


def test_zero_range_that_fails_with_enospc(dev: SimulatedPmem) -> None:
    """Zero-range allocates the hole at the end of its range: no block for it."""

    def op(f: daxfs.fs.file.File) -> None:
        f.truncate(80 * BLOCK)  # a hole after the data
        f.fallocate(30 * BLOCK, 60 * BLOCK, ZERO)

    run_failing(dev, fill, op, errno.ENOSPC)


def fail_the_next_fence(fs: daxfs.FileSystem) -> None:
    dev = fs.device
    assert isinstance(dev, FlakyPmem)
    dev.fail_next = True


@pytest.mark.parametrize(
    ("name", "op"),
    [
        ("truncate", lambda f: f.truncate(10 * BLOCK + 5)),
        ("punch", lambda f: f.fallocate(20 * BLOCK, 30 * BLOCK, PUNCH)),
        ("zero range", lambda f: f.fallocate(20 * BLOCK, 30 * BLOCK, ZERO)),
        ("punch a sixth extent", lambda f: f.fallocate(30 * BLOCK, BLOCK, PUNCH)),
        ("punch over holes", lambda f: f.fallocate(0, 12 * BLOCK, PUNCH)),
    ],
)
def test_operation_whose_commit_fails_with_eio(
    dev: SimulatedPmem, name: str, op: Callable[[daxfs.fs.file.File], None]
) -> None:
    run_failing(dev, fail_the_next_fence, op, errno.EIO)


class Pinned:
    """A pin on block 20 of /f, held through another open file."""

    def __init__(self) -> None:
        self.held: list[tuple[daxfs.fs.file.File, daxfs.mm.SGList]] = []

    def pin(self, fs: daxfs.FileSystem) -> None:
        g = fs.open("/f", "rb", buffering=0)
        self.held.append((g, g.pin(20 * BLOCK, BLOCK)))

    def release(self) -> None:
        for g, sg in self.held:
            sg.unpin()
            g.close()


def test_punch_over_a_pin_that_outlives_the_timeout(dev: SimulatedPmem) -> None:
    pinned = Pinned()
    op = lambda f: f.fallocate(0, 64 * BLOCK, PUNCH)  # noqa: E731
    run_failing(dev, pinned.pin, op, errno.EBUSY, layout_timeout=0, release=pinned.release)


def test_truncate_over_a_pin_without_waiting(dev: SimulatedPmem) -> None:
    pinned = Pinned()
    op = lambda f: f.truncate(BLOCK, nowait=True)  # noqa: E731
    run_failing(dev, pinned.pin, op, errno.EAGAIN, release=pinned.release)


@pytest.mark.parametrize("nowait", [False, True])
def test_pinned_range_errors_name_the_path_and_the_pinned_bytes(
    dev: SimulatedPmem, nowait: bool
) -> None:
    """Not 'inode 3' and [0, 2**76): the path, and the bytes pinned inside the range."""
    with daxfs.mount(dev, layout_timeout=0) as fs:
        five_extents(fs)
        with fs.open("/f", "rb+", buffering=0) as f, f.pin(20 * BLOCK + 10, 100):
            with pytest.raises(OSError, match=r"bytes \[81930, 82030\) are pinned") as info:
                f.truncate(BLOCK, nowait=nowait)
            assert info.value.filename == "/f"
            with pytest.raises(OSError, match=r"bytes \[82000, 82030\) are pinned.*: /f"):
                fs.truncate("/f", 82000, nowait=nowait)
            with pytest.raises(OSError, match=r"bytes \[81930, 82000\) are pinned.*: /f"):
                f.fallocate(0, 82000, PUNCH, nowait=nowait)
            with pytest.raises(OSError, match=r"bytes \[81930, 82030\) are pinned.*: /f"):
                f.pwrite(b"x" * 5 * BLOCK, 18 * BLOCK)
