"""The files' page cache (daxfs.fs.filecache): an address space per file over the
file's direct I/O, on a mount bounded by ``cache_size``.

Against a bytearray model: random buffered and direct reads and writes,
truncate and fallocate, every byte checked, and again after a remount without
the bound.  Coherence: direct writes, mappings, pins, an inode number reused.
Faults: EIO on a miss or on the write-back leaves the old bytes and caches
nothing wrong; ENOSPC for the out-of-place write goes the other way.
"""

from __future__ import annotations

import errno
import random

import pytest

from daxfs.errors import NoSpace
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from daxfs.fs.direct import aligned_buffer
from daxfs.fs.filecache import FileCache
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mkfs, mount
from daxfs.pagecache.bounded import BoundedBlockCache
from daxfs.testing.blockfaults import FaultyBlockDevice
from daxfs.testing.simblock import SimulatedBlockDevice

PAGE = 4096
MIB = 1 << 20


def fresh(size: int = 32 * MIB) -> SimulatedBlockDevice:
    disk = SimulatedBlockDevice(size)
    mkfs(disk)
    return disk


def files_of(fs: FileSystem) -> FileCache:
    assert fs.direct is not None
    assert fs.direct.files is not None
    return fs.direct.files


def cow_writes(fs: FileSystem) -> int:
    assert fs.direct is not None
    return fs.direct.stats["cow_writes"]


def test_buffered_io_goes_through_the_files_space() -> None:
    disk = fresh()
    with mount(disk, cache_size="64K") as fs, fs.open("/f", "wb+", buffering=0) as f:
        assert isinstance(fs.device, BoundedBlockCache)
        f.write(b"a" * 10_000)
        assert cow_writes(fs) == 1
        pool = fs.device.files
        assert pool.resident == 3 * PAGE  # the written pages stay cached, clean
        assert pool.dirty == 0
        hits = pool.stats.hits
        assert f.pread(100, 5000) == b"a" * 100
        assert pool.stats.hits == hits + 1  # a re-read is a hit: no I/O
        buf = bytearray(6000)
        misses = pool.stats.misses
        assert f.preadinto(buf, 3000) == 6000  # pages 0-2, all cached: the lean copy
        f.seek(1000)
        assert f.readinto(buf) == 6000
        assert buf == b"a" * 6000
        assert pool.stats.hits == hits + 1 + 3 + 2
        assert pool.stats.misses == misses
        assert fs.device.pages.pool.resident == 0  # nothing went the device's way


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_against_a_model(seed: int) -> None:
    rng = random.Random(seed)
    disk = fresh()
    model = bytearray()
    with mount(disk, cache_size="64K") as fs:
        f = fs.open("/f", "wb+", buffering=0)
        d = fs.open("/f", "rb+", buffering=0, direct=True)
        for step in range(250):
            kind = rng.choice(
                ["write"] * 5 + ["read"] * 4 + ["big", "truncate", "punch", "zero", "dwrite"]
            )
            if kind in ("write", "big"):
                pos = rng.randrange(0, 300_000)
                n = rng.randrange(1, 20_000 if kind == "write" else 120_000)
                data = rng.randbytes(n)
                assert f.pwrite(data, pos) == n
                if len(model) < pos + n:
                    model.extend(bytes(pos + n - len(model)))
                model[pos : pos + n] = data
            elif kind == "read":
                pos = rng.randrange(0, len(model) + 5000)
                n = rng.randrange(0, 30_000)
                assert f.pread(n, pos) == bytes(model[pos : pos + n]), step
                buf = bytearray(rng.randrange(1, 20_000))
                got = f.preadinto(buf, pos)
                assert buf[:got] == model[pos : pos + len(buf)], step
                f.seek(pos)
                got = f.readinto(buf)
                assert buf[:got] == model[pos : pos + len(buf)], step
                assert f.tell() == pos + got
            elif kind == "truncate":
                size = rng.randrange(0, 320_000)
                f.truncate(size)
                model = model[:size] + bytearray(max(0, size - len(model)))
            elif kind in ("punch", "zero"):
                pos, n = rng.randrange(0, 300_000), rng.randrange(1, 40_000)
                mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE if kind == "punch" else 0
                mode = mode or FALLOC_FL_ZERO_RANGE
                f.fallocate(pos, n, mode)
                end = min(pos + n, len(model)) if kind == "punch" else pos + n
                if kind == "zero" and len(model) < end:
                    model.extend(bytes(end - len(model)))
                model[pos:end] = bytes(max(0, end - pos))
            else:  # a direct write of whole blocks; buffered reads must see it
                pos = rng.randrange(0, 60) * PAGE
                buf = aligned_buffer(rng.randrange(1, 5) * PAGE)
                buf[:] = rng.randbytes(len(buf))
                d.pwrite(buf, pos)
                if len(model) < pos + len(buf):
                    model.extend(bytes(pos + len(buf) - len(model)))
                model[pos : pos + len(buf)] = buf
            assert f.stat().st_size == len(model)
        assert f.pread(len(model) + 1, 0) == model
        assert cow_writes(fs) > 0
        assert fs.device.files.stats.evictions > 0  # type: ignore[attr-defined]
        f.close()
        d.close()
    assert fsck(disk).clean
    with mount(disk) as fs:
        assert fs.open("/f", "rb").read() == model


def test_direct_write_then_buffered_read_sees_it() -> None:
    disk = fresh()
    with mount(disk, cache_size="64K") as fs, fs.open("/f", "wb+", buffering=0) as f:
        f.write(b"o" * 3 * PAGE)
        assert f.pread(PAGE, PAGE) == b"o" * PAGE  # cached
        with fs.open("/f", "rb+", buffering=0, direct=True) as d:
            buf = aligned_buffer(PAGE)
            buf[:] = b"n" * PAGE
            d.pwrite(buf, PAGE)  # an overwrite: no transaction, times owed
        assert f.pread(3 * PAGE, 0) == b"o" * PAGE + b"n" * PAGE + b"o" * PAGE
        buf = bytearray(PAGE)
        assert f.preadinto(buf, PAGE) == PAGE  # cached again by the pread above
        assert buf == b"n" * PAGE
        f.pwrite(b"b", PAGE + 10)  # a buffered write after it keeps the direct bytes
        with fs.open("/f", "rb", buffering=0, direct=True) as d:
            buf = aligned_buffer(3 * PAGE)
            assert d.preadinto(buf, 0) == 3 * PAGE
            assert bytes(buf[PAGE : 2 * PAGE]) == b"n" * 10 + b"b" + b"n" * (PAGE - 11)


def test_a_mapped_or_pinned_file_goes_the_other_way() -> None:
    disk = fresh()
    with mount(disk, cache_size="64K") as fs, fs.open("/f", "wb+", buffering=0) as f:
        f.write(b"x" * 2 * PAGE)
        pool = fs.device.files  # type: ignore[attr-defined]
        assert pool.resident == 2 * PAGE
        m = f.mmap()
        assert pool.resident == 0  # mapping empties the file's space
        m[0:5] = b"mmap!"
        m.msync(0, 5)
        writes = cow_writes(fs)
        f.pwrite(b"while mapped", 100)
        assert cow_writes(fs) == writes  # DataPath's way: blocks under a mapping stay
        assert bytes(m[100:112]) == b"while mapped"
        assert f.pread(12, 100) == b"while mapped"
        assert pool.resident == 0
        m.close()
        f.fsync()  # the closed mapping's ranges flushed: routed again
        assert f.pread(5, 0) == b"mmap!"
        f.pwrite(b"after", 200)
        assert cow_writes(fs) == writes + 1
        with f.pin(0, PAGE) as sg:
            f.pwrite(b"pinned", 2 * PAGE)  # outside the pinned range: allowed
            assert cow_writes(fs) == writes + 1
            assert sg is not None
        assert f.pread(6, 2 * PAGE) == b"pinned"
        assert f.pread(12, 100) == b"while mapped"
        assert f.pread(5, 200) == b"after"


def test_a_reused_inode_number_never_shows_the_old_files_pages() -> None:
    disk = fresh()
    with mount(disk, cache_size="64K") as fs:
        with fs.open("/a", "wb+", buffering=0) as f:
            f.write(b"A" * 3000)
            assert f.pread(3000, 0) == b"A" * 3000
            ino = f.stat().st_ino
        fs.unlink("/a")
        with fs.open("/b", "wb+", buffering=0) as f:
            assert f.stat().st_ino == ino  # the number came back
            f.truncate(3000)  # a hole: zeros, not the old file's cached pages
            assert f.pread(3000, 0) == bytes(3000)
            f.pwrite(b"B", 10)
            assert f.pread(12, 0) == bytes(10) + b"B" + bytes(1)


def test_rename_keeps_the_files_pages_right() -> None:
    disk = fresh()
    with mount(disk, cache_size="64K") as fs:
        fs.open("/x", "wb").write(b"x" * 5000)
        fs.open("/y", "wb").write(b"y" * 5000)
        assert fs.open("/x", "rb").read() == b"x" * 5000
        fs.rename("/y", "/x")
        assert fs.open("/x", "rb").read() == b"y" * 5000


def test_eio_of_the_write_back_keeps_the_old_bytes() -> None:
    inner = fresh()
    with mount(inner) as fs:
        fs.open("/f", "wb").write(b"o" * 20_000)
    faulty = FaultyBlockDevice(inner)
    with mount(faulty, cache_size="64K") as fs, fs.open("/f", "rb+", buffering=0) as f:
        assert f.pread(20_000, 0) == b"o" * 20_000  # cached
        faulty.arm("write", 1)
        with pytest.raises(OSError, match="new blocks") as info:
            f.pwrite(b"n" * 6000, 3000)
        assert info.value.errno == errno.EIO
        assert fs.device.files.dirty == 0  # type: ignore[attr-defined]
        assert f.pread(20_000, 0) == b"o" * 20_000  # nothing of it cached, nor committed
        assert f.stat().st_size == 20_000
        f.pwrite(b"n" * 6000, 3000)
        assert f.pread(10, 2995) == b"o" * 5 + b"n" * 5
    assert fsck(inner).clean
    with mount(inner) as fs:
        assert fs.open("/f", "rb").read() == b"o" * 3000 + b"n" * 6000 + b"o" * 11_000


def test_eio_of_a_miss_caches_nothing() -> None:
    inner = fresh()
    with mount(inner) as fs:
        fs.open("/f", "wb").write(b"y" * 100_000)
    faulty = FaultyBlockDevice(inner)
    with mount(faulty, cache_size="64K") as fs, fs.open("/f", "rb+", buffering=0) as f:
        faulty.arm("read", 1)
        with pytest.raises(OSError, match="through the page cache") as info:
            f.pwrite(b"z", 50_001)  # the partly covered page is read first
        assert info.value.errno == errno.EIO
        assert f.pread(3, 50_000) == b"yyy"
        assert fs.device.files.dirty == 0  # type: ignore[attr-defined]


def test_no_space_for_a_copy_goes_the_other_way() -> None:
    """A full filesystem: the out-of-place write needs as many free blocks as it
    writes; without them the write is journaled in place (DataPath's way)."""
    disk = fresh(16 * MIB)
    with mount(disk, cache_size="64K") as fs:
        fs.open("/f", "wb").write(b"o" * 64 * PAGE)
        filler = fs.open("/fill", "wb", buffering=0)
        chunk = b"f" * (64 * PAGE)
        with pytest.raises(NoSpace):
            while True:
                filler.write(chunk)
        with pytest.raises(NoSpace):
            while True:  # the last blocks, one at a time
                filler.write(b"f" * PAGE)
        filler.close()
        with fs.open("/f", "rb+", buffering=0) as f:
            f.pwrite(b"N" * 4 * PAGE, 8 * PAGE)
            assert files_of(fs).stats["fallback_nospace"] >= 1
            assert f.pread(4 * PAGE + 2, 8 * PAGE - 1) == b"o" + b"N" * 4 * PAGE + b"o"
    assert fsck(disk).clean
    with mount(disk) as fs:
        data = fs.open("/f", "rb").read()
        assert data == b"o" * 8 * PAGE + b"N" * 4 * PAGE + b"o" * 52 * PAGE


@pytest.mark.parametrize("size", [3 * PAGE - 100, 50 * PAGE + 7])
def test_threads_see_whole_writes_only(size: int) -> None:
    """Writers rewrite the whole file with one byte value each time (through cached
    pages, or a bounce buffer past a quarter of the 64 KiB pool); readers of any range
    must see one value only: a buffered write is atomic to readers too."""
    import threading

    disk = fresh()
    with mount(disk, cache_size="64K") as fs:
        fs.open("/f", "wb").write(b"\0" * size)
        errors: list[BaseException] = []
        stop = threading.Event()

        def writer(k: int) -> None:
            rng = random.Random(k)
            try:
                with fs.open("/f", "rb+", buffering=0) as f:
                    for _ in range(40):
                        assert f.pwrite(bytes([rng.randrange(1, 256)]) * size, 0) == size
            except BaseException as exc:
                errors.append(exc)

        def reader(k: int) -> None:
            rng = random.Random(100 + k)
            try:
                with fs.open("/f", "rb", buffering=0) as f:
                    while not stop.is_set():
                        pos = rng.randrange(size)
                        got = f.pread(rng.randrange(1, size + 1), pos)
                        assert got == got[:1] * len(got), f"a torn read at {pos}"
                        view = bytearray(rng.randrange(1, 3 * PAGE))
                        n = f.preadinto(view, rng.randrange(size))
                        assert view[:n] == view[:1] * n
            except BaseException as exc:
                errors.append(exc)

        writers = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
        readers = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
        for t in writers + readers:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        for t in readers:
            t.join()
        assert not errors, errors
        final = fs.open("/f", "rb").read()
        assert len(final) == size
        assert final == final[:1] * size
    with mount(disk) as fs:
        assert fs.open("/f", "rb").read() == final
