"""fsync after munmap makes mapped stores durable, as on Linux (issue 8).

A store through a writable DAX mapping may sit in a CPU cache until it is
flushed.  Linux writes back a file's dirty mapped ranges at fsync, fdatasync,
sync and unmount, even after munmap; so does daxfs (daxfs.fs.writeback).
Each test stores through a mapping, closes it without msync, runs one of
those calls, and checks every crash state of SimulatedPmem; the control test
shows that without them the stores may be lost, so the checks can fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import daxfs
from daxfs.fs.fsck import fsck
from daxfs.testing import SimulatedPmem
from tests import helpers

BLOCK = 4096
SIZE = 16 << 20
STORES = {0: b"first block!", 3 * BLOCK + 100: b"in the fourth", 7 * BLOCK - 13: b"last bytes.."}


@pytest.fixture
def dev() -> Iterator[SimulatedPmem]:
    yield from helpers.fresh_device(SIZE)


def store_and_unmap(fs: daxfs.FileSystem, path: str = "/f", blocks: int = 7) -> daxfs.fs.file.File:
    """Store through a writable mapping of ``path`` and close it without msync."""
    with fs.open(path, "wb", buffering=0) as f:
        f.write(bytes(blocks * BLOCK))
    f = fs.open(path, "rb+", buffering=0)
    with f.mmap() as m:
        for offset, data in STORES.items():
            m[offset : offset + len(data)] = data
    return f


def seen_after_crashes(dev: SimulatedPmem, path: str = "/f", limit: int = 16) -> list[bytes]:
    """The file's contents in each of ``limit`` crash states (mounted, fsck clean)."""
    out = []
    for state in dev.crash_states(limit=limit, seed=7):
        with daxfs.mount(state) as fs, fs.open(path, "rb") as f:
            out.append(f.read())
        assert fsck(state).clean
    return out


def all_stores_in(data: bytes) -> bool:
    return all(data[o : o + len(s)] == s for o, s in STORES.items())


def test_without_fsync_the_stores_may_be_lost(dev: SimulatedPmem) -> None:
    """The control: the crash states do lose unflushed stores, so the tests below can fail."""
    fs = daxfs.mount(dev)
    f = store_and_unmap(fs)
    seen = seen_after_crashes(dev)
    assert not all(all_stores_in(data) for data in seen)
    f.close()
    fs.unmount()


@pytest.mark.parametrize(
    ("name", "persist"),
    [
        ("fsync", lambda fs, f: f.fsync()),
        ("fdatasync", lambda fs, f: f.fdatasync()),
        ("FileSystem.sync", lambda fs, f: fs.sync()),
        ("fsync of another open file of the inode", lambda fs, f: reopen_fsync(fs)),
    ],
)
def test_stores_of_a_closed_mapping_are_durable_after(
    dev: SimulatedPmem,
    name: str,
    persist: Callable[[daxfs.FileSystem, daxfs.fs.file.File], None],
) -> None:
    fs = daxfs.mount(dev)
    f = store_and_unmap(fs)
    persist(fs, f)
    for data in seen_after_crashes(dev):
        assert all_stores_in(data), name
    f.close()
    fs.unmount()


def reopen_fsync(fs: daxfs.FileSystem) -> None:
    with fs.open("/f", "rb", buffering=0) as g:
        g.fsync()


def test_stores_of_a_closed_mapping_are_durable_after_unmount(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    store_and_unmap(fs).close()
    fs.unmount()
    for data in seen_after_crashes(dev):
        assert all_stores_in(data)


def test_writeback_forgets_ranges_once_flushed(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    f = store_and_unmap(fs)
    ino = f.inode.ino
    assert fs.data.mapped_ranges.ranges(ino) == [(0, 7 * BLOCK)]
    f.fsync()
    assert fs.data.mapped_ranges.ranges(ino) == []
    with f.mmap(BLOCK, 2 * BLOCK) as m:  # a live mapping stays remembered after fsync
        m[0:4] = b"live"
        f.fsync()
        assert fs.data.mapped_ranges.ranges(ino) == [(BLOCK, 3 * BLOCK)]
    assert fs.data.mapped_ranges.ranges(ino) == [(BLOCK, 3 * BLOCK)]
    f.close()
    fs.sync()
    assert fs.data.mapped_ranges.ranges(ino) == []
    fs.unmount()


def test_writeback_of_files_changed_or_deleted_after_the_mapping_closed(
    dev: SimulatedPmem,
) -> None:
    """Truncated, rewritten, deleted, or their inode reused: sync flushes what is theirs."""
    fs = daxfs.mount(dev)
    for path in ("/trunc", "/cow", "/gone"):
        store_and_unmap(fs, path, 80 if path == "/cow" else 7).close()
    fs.truncate("/trunc", 2 * BLOCK)  # the rest of the range is past the end of file
    with fs.open("/cow", "rb+", buffering=0) as f:
        f.pwrite(b"C" * (300 << 10), 0)  # over 256 KiB: copy-on-write into new blocks
    fs.unlink("/gone")  # its blocks are freed: nothing to flush
    with fs.open("/new", "wb", buffering=0) as f:  # may take the inode of /gone
        f.write(b"new file")
    fs.sync()
    for data in seen_after_crashes(dev, "/trunc", limit=8):
        assert data == b"first block!" + bytes(2 * BLOCK - 12)
    for data in seen_after_crashes(dev, "/cow", limit=8):
        assert data == b"C" * (300 << 10) + bytes(80 * BLOCK - (300 << 10))
    fs.unmount()
    assert fsck(dev).clean
