"""A skeptical review of the page cache of files (daxfs/fs/filecache.py): can a change to
a file be missed by a space's stamp?

A space is emptied when the inode's (record object, size, mtime, ctime) differ from
its stamp; the hit paths (``pread_hit`` and ``readinto_hit`` at the review, the hit
reader, ``HitReader``, since) compare the record and ctime alone and do not ask
whether the file is still routed through its space.  Only ``File``s that
have the page cache (not ``direct=True``) call ``FileCache.changed``/``forget``.  So
every change made another way -- a ``direct=True`` File's writes, truncate, fallocate
and mmap, ``FileSystem.truncate`` -- is seen by the buffered Files only through the
stamp.  Each test below makes one such change between two buffered reads of the same
cached page and asks for the new bytes.

Findings (held as xfail(strict=True) by the reviewer HG; fixed by helper HH, the
tests now plain):

- R1: a DAX mapping made through a ``direct=True`` File left the space as it was
  (``File.mmap`` forgot the space only when its own File had the page cache), and
  ``pread_hit``/``readinto_hit`` do not check routing: stores through the mapping were
  never seen by buffered reads of pages cached before, even after ``msync``, until the
  mapping was closed (its close changes ctime).
- R2: the stamp rested on ``time.time_ns`` giving a new value to every change.  With a
  clock that repeats a value (frozen, as tests/fs/conftest.py's ``frozen`` fixture
  freezes it; a coarse clocksource; a step back) a direct write, a punch through a
  ``direct=True`` File, or a path truncate that shrinks and grows back to the same size
  was missed: buffered reads returned the old bytes.

The fix: ONE owner for "this inode changed", ``Inode.data_changed`` (daxfs/fs/inode.py),
called by every change of a file's data, size or map and by a mapping or pin's
registration; it clears the space's stamp (daxfs/fs/filecache.py, invariant 4).
tests/pagecache/test_filecache_changes.py has pins, threads and a planted bug per call.

R3 (found by HH, fixed by helper HI): stores through a pin's views on a block-backed
mount (a READ bio into an SGList, as issue 10 section 1 allows) landed in the block
cache's memory and were never written to the disk: after the unpin a bounded mount's
page cache re-read the disk's old bytes, and a remount lost them (bounded or not); on
pmem nothing persisted them.  Now a writable pin registers its range where writable
mappings do (``mapped_ranges``: flushed at fsync, sync and unmount) and unpin writes
it back and persists it (daxfs/mm/pin.py); tests/crash/test_pin_stores.py crashes it.

The tests that pass are the same changes with the clock running: they pin down what the
stamp does catch (direct writes, punch, zero-range, truncate through another File or a
path, an inode number reused, a journal abort that reloads the record, xattr, rename and
link).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator

import pytest

import daxfs
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from daxfs.fs.direct import aligned_buffer
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.blockfaults import FaultyBlockDevice
from daxfs.testing.simblock import SimulatedBlockDevice

PAGE = 4096
SIZE = 16 << 20
#: what a clock that repeats itself returns (tests/helpers.CLOCK)
CLOCK = 1_700_000_000_123_456_789


@pytest.fixture
def fs() -> Iterator[FileSystem]:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    with mount(disk, cache_size="256K") as mounted:
        yield mounted


def cached_file(fs: FileSystem, path: str = "/f", data: bytes = b"a" * 2 * PAGE) -> daxfs.File:
    """A buffered File of ``data`` whose pages are cached (read back once: a hit next)."""
    f = fs.open(path, "wb+", buffering=0)
    f.write(data)
    assert f.pread(len(data), 0) == data
    hits = fs.device.files.stats.hits  # type: ignore[attr-defined]
    assert f.pread(4, 0) == data[:4]
    assert fs.device.files.stats.hits == hits + 1, "not a hit: the test tests nothing"  # type: ignore[attr-defined]
    return f  # type: ignore[return-value]


def aligned(data: bytes) -> memoryview:
    buf = aligned_buffer(len(data))
    buf[:] = data
    return memoryview(buf)


def reads(f: daxfs.File, n: int, pos: int) -> tuple[bytes, bytes]:
    """The bytes through ``pread`` and ``preadinto`` (both first try the hit reader)."""
    into = bytearray(n)
    got = f.preadinto(into, pos)
    return f.pread(n, pos), bytes(into[:got])


@pytest.fixture
def repeating_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """``time.time_ns`` returns one value (as the ``frozen`` fixture of tests/fs does)."""
    monkeypatch.setattr(time, "time_ns", lambda: CLOCK)


# -- R1: a mapping through a direct=True File -------------------------------------------


def test_stores_through_a_mapping_of_a_direct_file_are_seen_by_buffered_reads(
    fs: FileSystem,
) -> None:
    f = cached_file(fs)
    d = fs.open("/f", "rb+", buffering=0, direct=True)
    m = d.mmap(0, 2 * PAGE)
    try:
        m[0:4] = b"MMAP"
        m.msync(0, PAGE)
        assert reads(f, 4, 0) == (b"MMAP", b"MMAP")
    finally:
        m.close()
        d.close()
        f.close()


def test_stores_through_a_mapping_of_a_buffered_file_are_seen(fs: FileSystem) -> None:
    """The same through a File that has the page cache: its mmap empties the space."""
    f = cached_file(fs)
    g = fs.open("/f", "rb+", buffering=0)
    m = g.mmap(0, 2 * PAGE)
    try:
        m[0:4] = b"MMAP"
        assert reads(f, 4, 0) == (b"MMAP", b"MMAP")
    finally:
        m.close()
        g.close()
    assert reads(f, 4, 0) == (b"MMAP", b"MMAP")
    f.close()


def test_a_mapping_closed_then_buffered_reads_see_its_stores(fs: FileSystem) -> None:
    f = cached_file(fs)
    d = fs.open("/f", "rb+", buffering=0, direct=True)
    m = d.mmap(0, 2 * PAGE)
    m[PAGE : PAGE + 4] = b"MMAP"
    m.close()
    d.close()
    assert reads(f, 4, PAGE) == (b"MMAP", b"MMAP")
    f.close()


# -- changes another way, the clock running: the stamp catches them --------------------


def test_a_direct_write_is_seen(fs: FileSystem) -> None:
    f = cached_file(fs)
    with fs.open("/f", "rb+", buffering=0, direct=True) as d:
        d.pwrite(aligned(b"d" * PAGE), 0)
    assert reads(f, 4, 0) == (b"dddd", b"dddd")
    f.close()


@pytest.mark.parametrize(
    ("mode", "expect"),
    [
        (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, bytes(4)),
        (FALLOC_FL_ZERO_RANGE, bytes(4)),
        (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, bytes(4)),
    ],
)
def test_a_fallocate_through_a_direct_file_is_seen(
    fs: FileSystem, mode: int, expect: bytes
) -> None:
    f = cached_file(fs)
    with fs.open("/f", "rb+", buffering=0, direct=True) as d:
        d.fallocate(PAGE, PAGE, mode)
    assert reads(f, 4, PAGE) == (expect, expect)
    f.close()


def test_a_path_truncate_shrinking_and_growing_back_is_seen(fs: FileSystem) -> None:
    f = cached_file(fs)
    fs.truncate("/f", 10)
    fs.truncate("/f", 2 * PAGE)
    assert reads(f, 4, PAGE) == (bytes(4), bytes(4))
    assert reads(f, 4, 8) == (b"aa\0\0", b"aa\0\0")
    f.close()


def test_a_truncate_through_another_file_is_seen(fs: FileSystem) -> None:
    f = cached_file(fs)
    with fs.open("/f", "rb+", buffering=0, direct=True) as d:
        d.truncate(0)
        d.truncate(2 * PAGE)
    assert reads(f, 4, 0) == (bytes(4), bytes(4))
    f.close()


def test_an_inode_number_reused_by_another_file_shows_its_bytes(fs: FileSystem) -> None:
    f = cached_file(fs)
    ino = fs.stat("/f").st_ino
    f.close()
    fs.unlink("/f")
    with fs.open("/g", "wb+", buffering=0) as g:
        assert fs.stat("/g").st_ino == ino, "the number was not reused: the test tests nothing"
        with fs.open("/g", "rb+", buffering=0, direct=True) as d:
            d.pwrite(aligned(b"g" * 2 * PAGE), 0)
        assert reads(g, 4, 0) == (b"gggg", b"gggg")


@pytest.mark.parametrize("how", ["setxattr", "rename", "link", "chmod", "utime"])
def test_metadata_changes_keep_the_bytes_right(fs: FileSystem, how: str) -> None:
    f = cached_file(fs)
    if how == "setxattr":
        fs.setxattr("/f", "user.x", b"1")
    elif how == "rename":
        fs.rename("/f", "/f2")
    elif how == "link":
        fs.link("/f", "/f3")
    elif how == "chmod":
        fs.chmod("/f", 0o600)
    else:
        fs.utime("/f", ns=(CLOCK, CLOCK))
    assert reads(f, 4, 0) == (b"aaaa", b"aaaa")
    f.close()


def test_a_failed_commit_after_a_direct_overwrite_keeps_the_bytes_right() -> None:
    """A direct overwrite in place (no transaction: its times are owed, in memory only),
    then a transaction of the inode that fails (EIO of the FLUSH): the abort re-reads
    the record, whose ctime is again the one the space was stamped with -- but it is a
    new record object, so the space is emptied and buffered reads show the direct write."""
    base = SimulatedBlockDevice(SIZE)
    mkfs(base)
    disk = FaultyBlockDevice(base)
    with mount(disk, cache_size="256K") as fs:
        f = cached_file(fs)
        stamped = fs.stat("/f").st_ctime_ns
        d = fs.open("/f", "rb+", buffering=0, direct=True)
        d.pwrite(aligned(b"d" * PAGE), 0)
        assert fs.direct.stats["times_owed"] >= 1, "not the overwrite in place"  # type: ignore[union-attr]
        disk.arm("flush", 1, persistent=True)
        with pytest.raises(OSError, match="flush") as info:
            fs.setxattr("/f", "user.x", b"1")
        assert info.value.errno == errno.EIO
        disk.disarm()
        assert fs.stat("/f").st_ctime_ns == stamped  # the media's ctime is back
        assert reads(f, 4, 0) == (b"dddd", b"dddd")
        d.close()
        f.close()


# -- R2: the same changes with a clock that repeats a value ------------------------------


def test_a_direct_write_is_seen_with_a_repeating_clock(
    fs: FileSystem, repeating_clock: None
) -> None:
    f = cached_file(fs)
    with fs.open("/f", "rb+", buffering=0, direct=True) as d:
        d.pwrite(aligned(b"d" * PAGE), 0)
    assert reads(f, 4, 0) == (b"dddd", b"dddd")
    f.close()


def test_a_punch_through_a_direct_file_is_seen_with_a_repeating_clock(
    fs: FileSystem, repeating_clock: None
) -> None:
    f = cached_file(fs)
    with fs.open("/f", "rb+", buffering=0, direct=True) as d:
        d.fallocate(PAGE, PAGE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
    assert reads(f, 4, PAGE) == (bytes(4), bytes(4))
    f.close()


def test_a_path_truncate_and_back_is_seen_with_a_repeating_clock(
    fs: FileSystem, repeating_clock: None
) -> None:
    f = cached_file(fs)
    fs.truncate("/f", 10)
    fs.truncate("/f", 2 * PAGE)
    assert reads(f, 4, PAGE) == (bytes(4), bytes(4))
    f.close()


def test_changes_through_buffered_files_are_seen_with_a_repeating_clock(
    fs: FileSystem, repeating_clock: None
) -> None:
    """What does not depend on the clock: a buffered File's truncate, fallocate and
    writes empty the range at once (``FileCache.changed``) or write through it."""
    f = cached_file(fs)
    with fs.open("/f", "rb+", buffering=0) as g:
        g.fallocate(PAGE, PAGE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
        assert reads(f, 4, PAGE) == (bytes(4), bytes(4))
        g.pwrite(b"g" * 4, 0)
        assert reads(f, 4, 0) == (b"gggg", b"gggg")
        g.truncate(0)
        g.truncate(2 * PAGE)
        assert reads(f, 4, 0) == (bytes(4), bytes(4))
    f.close()


# -- R3 (found by HH while fixing R1): stores through a pin on a block-backed mount -------


@pytest.mark.parametrize("bounded", [True, False])
def test_stores_through_a_pin_on_a_block_mount_are_kept(bounded: bool) -> None:
    """R3, fixed by helper HI: a writable pin registers its range with the data path's
    ``mapped_ranges`` (as a writable mapping does) and unpin writes it back and FLUSHes."""
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    opts = {"cache_size": "256K"} if bounded else {}
    with mount(disk, **opts) as fs, fs.open("/f", "wb+", buffering=0) as f:
        f.write(b"a" * 2 * PAGE)
        sg = f.pin(0, 2 * PAGE)
        view = next(iter(sg.views()))
        view[0:4] = b"PINS"
        del view
        assert f.pread(4, 0) == b"PINS"  # while pinned: the DataPath reads the memfd
        sg.unpin()
        assert b"PINS" in disk.durable_image()  # durable on the disk, not just cached
        assert f.pread(4, 0) == b"PINS"
        assert reads(f, 4, 0) == (b"PINS", b"PINS")
    with mount(disk, **opts) as fs, fs.open("/f", "rb", buffering=0) as f:
        assert f.pread(4, 0) == b"PINS"


def test_stores_through_a_pin_on_pmem_are_persisted_at_unpin() -> None:
    """The same on pmem: unpin persists the range (no crash state loses the store)."""
    from daxfs.testing import SimulatedPmem

    dev = SimulatedPmem(SIZE)
    mkfs(dev)
    with mount(dev) as fs, fs.open("/f", "wb+", buffering=0) as f:
        f.write(b"a" * 2 * PAGE)
        with f.pin(0, 2 * PAGE) as sg:
            next(iter(sg.views()))[0:4] = b"PINS"
        states = list(dev.crash_states(limit=8))
        assert states
        for state in states:
            with mount(state) as after, after.open("/f", "rb", buffering=0) as g:
                assert g.pread(4, 0) == b"PINS"
