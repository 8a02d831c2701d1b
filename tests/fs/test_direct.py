"""Direct I/O (daxfs/fs/direct.py): iomap_begin -> bios -> completion -> iomap_end.

On a mount over a simulated block device: the mapping (UNWRITTEN extents
allocated by a direct write's iomap_begin, converted at completion in one
transaction with the size), the bios (the caller's memory as the segment, no
copy through the cache; zeros for the rest of a partly written new block),
Linux's alignment rules, durability on return, coherence with the cache
(BlockCache.write_back / invalidate), faults (EIO and short completions reach
the caller; nothing committed is lost), ENOSPC, and direct=True on DAX.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator

import pytest

from daxfs.block.bio import Bio, BioOp
from daxfs.block.cache import BlockCache
from daxfs.errors import InvalidArgument, NoSpace
from daxfs.fs.direct import DirectIO, aligned_buffer, buffer_address
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.fs.mount import mkfs, mount
from daxfs.iomap import IomapExtentFlags, IomapFlags, IomapType
from daxfs.testing import SimulatedPmem
from daxfs.testing.blockfaults import FaultyBlockDevice
from daxfs.testing.simblock import SimulatedBlockDevice

MIB = 1 << 20
SIZE = 16 * MIB


class RecordingDevice(FaultyBlockDevice):
    """Forwards every request; remembers each bio submitted to it."""

    def __init__(self, inner: SimulatedBlockDevice) -> None:
        super().__init__(inner)
        self.bios: list[tuple[BioOp, int, list[object]]] = []

    def submit_bio(self, bio: Bio) -> None:
        self.bios.append((bio.op, bio.sector, [seg.obj for seg in bio.segments]))
        super().submit_bio(bio)


@pytest.fixture
def disk() -> SimulatedBlockDevice:
    dev = SimulatedBlockDevice(SIZE)
    mkfs(dev)
    return dev


@pytest.fixture
def fs(disk: SimulatedBlockDevice) -> Iterator[FileSystem]:
    with mount(disk) as fs:
        yield fs


def pattern(n: int, seed: int = 1) -> mmap_t:
    buf = aligned_buffer(n)
    buf[:] = bytes((i * 7 + seed) & 0xFF for i in range(n))
    return buf


mmap_t = type(aligned_buffer(1))


def extents(fs: FileSystem, path: str) -> list[tuple[int, int, bool]]:
    """(first block, count, unwritten) of each extent of ``path``."""
    with fs.open(path, "rb", buffering=0) as f:
        inode = f.inode
        return [(e.lblk, e.length, e.unwritten) for e in fs.maps.extents(fs.store, inode, 0)]


# -- begin, bios, end ---------------------------------------------------------------------


def test_iomap_begin_of_a_direct_write_allocates_unwritten_in_a_transaction(
    fs: FileSystem,
) -> None:
    with fs.open("/f", "wb", buffering=0, direct=True) as f:
        inode = f.inode
        free = fs.statvfs().f_bfree
        with inode.lock:
            iomap = fs.data.iomap_begin(
                inode, 8192, 3 * BLOCK_SIZE, IomapFlags.WRITE | IomapFlags.DIRECT
            )
        assert iomap.type is IomapType.UNWRITTEN
        assert iomap.flags & IomapExtentFlags.NEW
        assert iomap.offset == 8192
        assert iomap.length == 3 * BLOCK_SIZE
        assert fs.statvfs().f_bfree == free - 3  # committed: on the media already
        # a second begin finds them (no NEW), a plain one does not allocate
        with inode.lock:
            again = fs.data.iomap_begin(
                inode, 8192, BLOCK_SIZE, IomapFlags.WRITE | IomapFlags.DIRECT
            )
            hole = fs.data.iomap_begin(inode, 0, BLOCK_SIZE, IomapFlags.NONE)
        assert again.type is IomapType.UNWRITTEN
        assert not again.flags & IomapExtentFlags.NEW
        assert hole.type is IomapType.HOLE
        assert inode.rec.size == 0  # the size waits for the completion
    assert extents(fs, "/f") == [(2, 3, True)]


def test_direct_write_into_a_hole_converts_and_sets_size_in_one_transaction(
    disk: SimulatedBlockDevice,
) -> None:
    rec = RecordingDevice(disk)
    with mount(rec) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        data = pattern(3 * BLOCK_SIZE)
        commits = fs.journal.seq if hasattr(fs.journal, "seq") else None
        rec.bios.clear()
        assert f.pwrite(data, BLOCK_SIZE) == 3 * BLOCK_SIZE
        writes = [b for b in rec.bios if b[0] is BioOp.WRITE]
        # the data bio's segment is the caller's buffer: no copy through the cache
        assert any(data in objs for _, _, objs in writes)
        assert extents(fs, "/f") == [(1, 3, False)]
        assert f.stat().st_size == 4 * BLOCK_SIZE
        out = aligned_buffer(4 * BLOCK_SIZE)
        assert f.preadinto(out, 0) == 4 * BLOCK_SIZE
        assert out[:BLOCK_SIZE] == bytes(BLOCK_SIZE)
        assert out[BLOCK_SIZE:] == data[:]
        del commits
    # durable on return: the disk's durable image mounts with the data
    again = SimulatedBlockDevice(SIZE, image=disk.durable_image())
    with mount(again) as fs2, fs2.open("/f", "rb") as g:
        assert g.read() == bytes(BLOCK_SIZE) + data[:]
    assert fsck(SimulatedBlockDevice(SIZE, image=disk.durable_image())).clean


def test_direct_read_reads_the_device_into_the_callers_buffer(
    disk: SimulatedBlockDevice,
) -> None:
    rec = RecordingDevice(disk)
    with mount(rec) as fs:
        with fs.open("/f", "wb") as w:
            w.write(bytes(range(256)) * 64)
        with fs.open("/f", "rb", buffering=0, direct=True) as f:
            rec.bios.clear()
            out = aligned_buffer(2 * BLOCK_SIZE)
            assert f.preadinto(out, 0) == 2 * BLOCK_SIZE
            reads = [b for b in rec.bios if b[0] is BioOp.READ]
            assert len(reads) == 1
            assert reads[0][2][0] is out
            assert out[:] == bytes(range(256)) * 32


def test_partial_block_write_into_a_hole_zeroes_the_rest_of_the_block(fs: FileSystem) -> None:
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(BLOCK_SIZE, 3), 0)  # the device block gets old bytes first
        f.truncate(0)
        assert f.direct_alignment == 512
        data = pattern(1024, 5)
        assert f.pwrite(data, 1024) == 1024
        assert fs.direct is not None
        assert fs.direct.stats["zero_bios"] >= 2
        assert f.stat().st_size == 2048
        with fs.open("/f", "rb") as g:  # through the cache, which is coherent
            assert g.read() == bytes(1024) + data[:]
        # the whole block is written, so the bytes past the size are zeros on the device
        f.truncate(BLOCK_SIZE)
        out = aligned_buffer(BLOCK_SIZE)
        f.preadinto(out, 0)
        assert out[:] == bytes(1024) + data[:] + bytes(BLOCK_SIZE - 2048)


def test_writing_past_an_unaligned_end_zeroes_the_old_tail(fs: FileSystem) -> None:
    with fs.open("/f", "wb") as w:
        w.write(b"a" * 100)
    with fs.open("/f", "rb+", buffering=0) as raw:  # a store past EOF, as a mapping can leave
        m = raw.mmap(0, 100)
        m[:100] = b"a" * 100
        inode = raw.inode
        ext = next(iter(fs.maps.extents(fs.store, inode, 0)))
        fs.device.write(ext.pblk * BLOCK_SIZE + 100, b"junk")
        m.close()
    with fs.open("/f", "rb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(512), 8192)
        out = aligned_buffer(8192)
        f.preadinto(out, 0)
        assert out[:100] == b"a" * 100
        assert out[100:] == bytes(8092)


def test_read_clamps_to_end_of_file_and_zeroes_past_it(fs: FileSystem) -> None:
    with fs.open("/f", "wb") as w:
        w.write(b"z" * 1000)
    with fs.open("/f", "rb", buffering=0, direct=True) as f:
        out = aligned_buffer(BLOCK_SIZE)
        out[:] = b"\xff" * BLOCK_SIZE
        assert f.preadinto(out, 0) == 1000
        # the device read 1024 bytes (aligned); those past the end read as zeros,
        # and the buffer past them is not touched
        assert out[:1000] == b"z" * 1000
        assert out[1000:1024] == bytes(24)
        assert out[1024:] == b"\xff" * (BLOCK_SIZE - 1024)
        assert f.preadinto(out, BLOCK_SIZE) == 0
        assert f.pread(512, 512) == b"z" * 488
        assert f.read(1024) == b"z" * 1000  # from the position, which is now unaligned
        with pytest.raises(InvalidArgument, match="offset 1000"):
            f.read(512)
        f.seek(1024)
        assert f.read(512) == b""
        f.seek(0)
        assert f.read() == b"z" * 1000  # readall


def test_holes_and_unwritten_extents_read_as_zeros(fs: FileSystem) -> None:
    with fs.open("/f", "wb+", buffering=0) as w:
        w.truncate(3 * BLOCK_SIZE)
        w.fallocate(BLOCK_SIZE, BLOCK_SIZE, 0)
    with fs.open("/f", "rb", buffering=0, direct=True) as f:
        out = aligned_buffer(3 * BLOCK_SIZE)
        out[:] = b"\x01" * len(out)
        assert f.preadinto(out, 0) == 3 * BLOCK_SIZE
        assert out[:] == bytes(3 * BLOCK_SIZE)


def test_write_into_unwritten_converts_only_what_it_wrote(fs: FileSystem) -> None:
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.fallocate(0, 4 * BLOCK_SIZE, 0)
        f.pwrite(pattern(BLOCK_SIZE), BLOCK_SIZE)
        assert extents(fs, "/f") == [(0, 1, True), (1, 1, False), (2, 2, True)]
        assert f.stat().st_size == 4 * BLOCK_SIZE  # fallocate set it; the write is inside


def test_write_updates_mtime_and_overwrite_keeps_the_blocks(fs: FileSystem) -> None:
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(2 * BLOCK_SIZE), 0)
        before = extents(fs, "/f")
        mtime = f.stat().st_mtime_ns
        f.pwrite(pattern(BLOCK_SIZE, 9), BLOCK_SIZE)
        assert extents(fs, "/f") == before  # in place: direct I/O does not copy-on-write
        assert f.stat().st_mtime_ns >= mtime
        assert f.pread(BLOCK_SIZE, BLOCK_SIZE) == pattern(BLOCK_SIZE, 9)[:]


def test_sequential_write_and_read_through_the_position(fs: FileSystem) -> None:
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        for i in range(4):
            assert f.write(pattern(BLOCK_SIZE, i)) == BLOCK_SIZE
        assert f.tell() == 4 * BLOCK_SIZE
        f.seek(0)
        for i in range(4):
            assert f.read(BLOCK_SIZE) == pattern(BLOCK_SIZE, i)[:]
    with fs.open("/f", "ab", buffering=0, direct=True) as f:
        f.write(pattern(512, 7))
        assert f.stat().st_size == 4 * BLOCK_SIZE + 512


# -- alignment ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "length", "skew", "named"),
    [
        (100, 512, 0, "offset 100"),
        (0, 100, 0, "length 100"),
        (512, 1000, 0, "length 1000"),
        (0, 512, 8, "buffer address"),
    ],
)
def test_unaligned_direct_io_is_einval_naming_the_alignment(
    fs: FileSystem, offset: int, length: int, skew: int, named: str
) -> None:
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(BLOCK_SIZE), 0)
        buf = memoryview(aligned_buffer(length + skew))[skew : skew + length]
        for call in (lambda: f.pwrite(buf, offset), lambda: f.preadinto(buf, offset)):
            with pytest.raises(InvalidArgument) as info:
                call()
            assert info.value.errno == errno.EINVAL
            text = str(info.value)
            assert named in text
            assert "512 bytes" in text
            assert "direct=True" in text
            assert "/f" in text
        with pytest.raises(InvalidArgument):
            f.submit_read(offset, buf)
        assert f.pread(BLOCK_SIZE, 0) == pattern(BLOCK_SIZE)[:]  # nothing changed


def test_bytes_objects_are_rarely_aligned_and_the_fallback_takes_them(fs: FileSystem) -> None:
    data = b"q" * 512
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        if buffer_address(memoryview(data)) % 512:
            with pytest.raises(InvalidArgument):
                f.pwrite(data, 0)
    with fs.open("/f", "rb+", buffering=0) as f:  # the documented fallback: no direct=True
        assert f.pwrite(b"q" * 3, 7) == 3


def test_direct_needs_buffering_0(fs: FileSystem) -> None:
    with pytest.raises(InvalidArgument, match="buffering=0"):
        fs.open("/f", "wb", direct=True)
    assert not fs.exists("/f")


def test_direct_on_dax_is_dax_and_takes_any_alignment() -> None:
    dev = SimulatedPmem(SIZE)
    mkfs(dev)
    with mount(dev) as fs:
        assert fs.direct is None
        with fs.open("/f", "wb+", buffering=0, direct=True) as f:
            assert f.direct
            assert f.direct_alignment == 1
            assert f.pwrite(b"abc", 3) == 3
            assert f.pread(10, 0) == bytes(3) + b"abc"
            fut = f.submit_read(0, bytearray(6))
            assert fut.done()
            assert fut.result() == 6


# -- coherence with the cache -------------------------------------------------------------


def test_cache_write_back_writes_only_dirty_blocks_of_the_range() -> None:
    disk = SimulatedBlockDevice(MIB)
    with BlockCache(disk) as cache:
        cache.write(1000, b"in", drain=False)
        cache.write(9000, b"out", drain=False)
        cache.write_back(512, 1024)
        assert disk.durable_image()[1000:1002] == b"in"  # written and durable
        assert disk.image()[9000:9003] == bytes(3)  # outside: still only in the cache
        assert cache.pending() == [(8704, 9216)]
        cache.write_back(0, 512)  # nothing dirty there: no I/O
        assert cache.pending() == [(8704, 9216)]
        cache.drain()
        assert disk.durable_image()[9000:9003] == b"out"


def test_cache_invalidate_takes_the_devices_bytes() -> None:
    disk = SimulatedBlockDevice(MIB)
    with BlockCache(disk) as cache:
        cache.write(4096, b"old" * 10)
        disk.write(4096, b"N" * 512, fua=True)  # around the cache, as direct I/O writes
        assert cache.read(4096, 3) == b"old"
        cache.invalidate(4096, 512)  # read back
        assert cache.read(4096, 512) == b"N" * 512
        cache.invalidate(8192, 4, b"data")  # or given the bytes
        assert cache.read(8192, 4) == b"data"
        with pytest.raises(InvalidArgument):
            cache.invalidate(8192, 4, b"toolong")
        assert cache.pending() == []


def test_direct_write_then_buffered_read_and_buffered_write_then_direct_read(
    fs: FileSystem,
) -> None:
    with fs.open("/f", "wb+", buffering=0, direct=True) as d, fs.open("/f", "rb+") as b:
        d.pwrite(pattern(2 * BLOCK_SIZE), 0)
        assert b.read() == pattern(2 * BLOCK_SIZE)[:]  # the cache took the direct write
        b.seek(100)
        b.write(b"buffered")
        b.flush()
        assert d.pread(512, 0)[100:108] == b"buffered"
        # an overwrite through the cache, then a direct read, then an overwrite again
        d.pwrite(pattern(512, 4), 0)
        b.seek(0)
        assert b.read(512) == pattern(512, 4)[:]


def test_direct_read_sees_stores_through_a_mapping(fs: FileSystem) -> None:
    with fs.open("/f", "wb+", buffering=0) as f:
        f.truncate(BLOCK_SIZE)
        m = f.mmap(0, BLOCK_SIZE)
        m[0:5] = b"store"
        with fs.open("/f", "rb", buffering=0, direct=True) as d:
            assert d.pread(512, 0)[:5] == b"store"
        m.close()


# -- faults and a full filesystem ---------------------------------------------------------


@pytest.mark.parametrize("short", [False, True])
def test_a_failed_write_bio_reaches_the_caller_and_commits_nothing(short: bool) -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    faulty = FaultyBlockDevice(disk)
    with mount(faulty) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(BLOCK_SIZE, 1), 0)
        faulty.arm("write", 1, short=short)
        with pytest.raises(OSError, match=r"rror|short") as info:
            f.pwrite(pattern(4 * BLOCK_SIZE, 2), BLOCK_SIZE)
        assert info.value.errno == errno.EIO
        assert "/f" in str(info.value)
        faulty.disarm()
        # nothing committed: the size, and the new blocks read as zeros (unwritten)
        assert f.stat().st_size == BLOCK_SIZE
        assert f.pread(BLOCK_SIZE, 0) == pattern(BLOCK_SIZE, 1)[:]
        f.truncate(5 * BLOCK_SIZE)
        assert f.pread(4 * BLOCK_SIZE, BLOCK_SIZE) == bytes(4 * BLOCK_SIZE)
        assert f.pwrite(pattern(BLOCK_SIZE, 3), 0) == BLOCK_SIZE  # it goes on
    assert fsck(disk).clean


def test_a_failed_overwrite_leaves_the_cache_as_the_disk() -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    faulty = FaultyBlockDevice(disk)
    with mount(faulty) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(4 * BLOCK_SIZE, 1), 0)
        faulty.arm("write", 1, short=True)
        with pytest.raises(OSError, match=r"rror|short"):
            f.pwrite(pattern(4 * BLOCK_SIZE, 2), 0)
        faulty.disarm()
        with fs.open("/f", "rb") as b:
            cached = b.read()
        assert f.pread(4 * BLOCK_SIZE, 0) == cached  # whatever landed, both agree
        assert cached[: 2 * BLOCK_SIZE] == pattern(4 * BLOCK_SIZE, 2)[: 2 * BLOCK_SIZE]


@pytest.mark.parametrize("short", [False, True])
def test_a_failed_read_bio_reaches_the_caller(short: bool) -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    faulty = FaultyBlockDevice(disk)
    with mount(faulty) as fs:
        with fs.open("/f", "wb") as w:
            w.write(b"r" * 3 * BLOCK_SIZE)
        with fs.open("/f", "rb", buffering=0, direct=True) as f:
            faulty.arm("read", 1, short=short)
            with pytest.raises(OSError, match=r"rror|short") as info:
                f.pread(3 * BLOCK_SIZE, 0)
            assert info.value.errno == errno.EIO
            faulty.disarm()
            assert f.pread(3 * BLOCK_SIZE, 0) == b"r" * 3 * BLOCK_SIZE
            fut = None
            faulty.arm("read", 1)
            fut = f.submit_read(0, aligned_buffer(BLOCK_SIZE))
            with pytest.raises(OSError, match=r"rror|allocate") as info2:
                fut.result(10)
            assert info2.value.errno == errno.EIO
            assert "/f" in str(info2.value)
            faulty.disarm()


def test_a_failed_flush_fails_the_write() -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    faulty = FaultyBlockDevice(disk)
    with mount(faulty) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        # a part of an unwritten block: three bios (zeros, data, zeros), so no FUA
        # but a FLUSH after them makes them durable before the commit
        f.fallocate(0, BLOCK_SIZE, 0)
        faulty.arm("flush", 1)
        with pytest.raises(OSError, match=r"rror|short") as info:
            f.pwrite(pattern(1024), 1024)
        assert info.value.errno == errno.EIO
        assert faulty.fault is not None
        assert faulty.fault.fired == 1
        faulty.disarm()
        assert f.stat().st_size == BLOCK_SIZE  # fallocate's; the write committed nothing
        assert extents(fs, "/f") == [(0, 1, True)]  # still unwritten
        assert f.pread(BLOCK_SIZE, 0) == bytes(BLOCK_SIZE)


def test_an_error_after_the_first_extent_makes_a_short_write() -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    faulty = FaultyBlockDevice(disk)
    with mount(faulty) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.fallocate(0, BLOCK_SIZE, 0)
        faulty.arm("flush", 1)  # the commit of the hole's allocation fails
        assert f.pwrite(pattern(2 * BLOCK_SIZE), 0) == BLOCK_SIZE
        faulty.disarm()
        assert extents(fs, "/f")[0] == (0, 1, False)


def test_enospc_on_a_full_filesystem() -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    with mount(disk) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        free = fs.statvfs().f_bavail * BLOCK_SIZE
        big = aligned_buffer(free + 16 * BLOCK_SIZE)
        # more than is free: the extents mapped before space ran out are written (short)
        done = f.pwrite(big, 0)
        assert 0 < done < len(big)
        assert f.stat().st_size == done
        f.truncate(0)
        with fs.open("/fill", "wb", buffering=0) as fill:
            fill.write(bytes(fs.statvfs().f_bavail * BLOCK_SIZE))
        with pytest.raises(NoSpace) as info:
            f.pwrite(big, 0)
        assert info.value.errno == errno.ENOSPC
        assert "/f" in str(info.value)
        assert f.stat().st_size == 0
        fut = f.submit_write(0, big)
        with pytest.raises(OSError, match=r"rror|allocate") as info2:
            fut.result(10)
        assert info2.value.errno == errno.ENOSPC
    assert fsck(disk).clean


def test_engine_entry_points_for_other_callers(fs: FileSystem) -> None:
    """The engine's API as the page cache calls it (DirectIO.read/write/submit)."""
    engine = fs.direct
    assert isinstance(engine, DirectIO)
    with fs.open("/f", "wb+", buffering=0) as f:
        inode = f.inode
        assert engine.write(inode, 0, pattern(BLOCK_SIZE)) == BLOCK_SIZE
        out = aligned_buffer(BLOCK_SIZE)
        assert engine.submit(inode, 0, out, write=False).result(10) == BLOCK_SIZE
        assert out[:] == pattern(BLOCK_SIZE)[:]
        with inode.lock:  # the synchronous calls allow inode.lock held
            assert engine.read(inode, 0, out) == BLOCK_SIZE
        # range_held: the caller holds the range (as a truncate or writeback would)
        with inode.lock:
            token = fs.data.lock_range(inode, 0, BLOCK_SIZE, create=True)
        fut = engine.submit(inode, 0, pattern(BLOCK_SIZE, 2), write=True, range_held=True)
        assert fut.result(10) == BLOCK_SIZE
        with inode.lock:
            fs.data.unlock_range(inode, token)
        assert f.pread(BLOCK_SIZE, 0) == pattern(BLOCK_SIZE, 2)[:]


def test_unmount_after_async_io_stops_the_worker(disk: SimulatedBlockDevice) -> None:
    fs = mount(disk)
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        futs = [f.submit_write(i * BLOCK_SIZE, pattern(BLOCK_SIZE, i)) for i in range(8)]
        assert [x.result(10) for x in futs] == [BLOCK_SIZE] * 8
    fs.unmount()
    assert fs.direct is not None
    assert fs.direct._worker is None
    with mount(disk) as fs2, fs2.open("/f", "rb") as g:
        data = g.read()
    assert data == b"".join(pattern(BLOCK_SIZE, i)[:] for i in range(8))


def test_image_file_mount_with_dax_never(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(os.fspath(tmp_path), "img")
    mkfs(path, size=SIZE, dax="never")
    with mount(path, dax="never") as fs:
        assert fs.direct is not None
        with fs.open("/f", "wb+", buffering=0, direct=True) as f:
            f.pwrite(pattern(64 * BLOCK_SIZE), 0)
            assert f.pread(64 * BLOCK_SIZE, 0) == pattern(64 * BLOCK_SIZE)[:]
    with mount(path) as fs, fs.open("/f", "rb") as g:  # the same image by DAX
        assert g.read() == pattern(64 * BLOCK_SIZE)[:]


@pytest.mark.parametrize("cache_size", [None, "1M"])
def test_coherence_on_a_bounded_mount(disk: SimulatedBlockDevice, cache_size: str | None) -> None:
    """With mount(cache_size=...), file data is in a page cache (paged) or, where a
    mapping was made, in the memfd (owned): both stay coherent with direct I/O."""
    with mount(disk, cache_size=cache_size) as fs, fs.open("/f", "wb+", buffering=0) as b:
        b.write(b"b" * 8 * BLOCK_SIZE)
        m = b.mmap(0, 2 * BLOCK_SIZE)  # the first two blocks become owned
        with fs.open("/f", "rb+", buffering=0, direct=True) as d:
            assert d.pread(BLOCK_SIZE, 0) == b"b" * BLOCK_SIZE  # through the page cache
            d.pwrite(pattern(4 * BLOCK_SIZE), 0)  # over owned and paged blocks
            assert b.pread(4 * BLOCK_SIZE, 0) == pattern(4 * BLOCK_SIZE)[:]
            assert bytes(m[:BLOCK_SIZE]) == pattern(BLOCK_SIZE)[:]
            b.pwrite(b"c" * 100, 3 * BLOCK_SIZE + 5)
            assert d.pread(BLOCK_SIZE, 3 * BLOCK_SIZE)[5:105] == b"c" * 100
            m[10:20] = b"mapped-st!"
            assert d.pread(512, 0)[10:20] == b"mapped-st!"
        m.close()
    with mount(disk) as fs, fs.open("/f", "rb") as g:
        data = g.read()
    want = bytearray(b"b" * 8 * BLOCK_SIZE)
    want[: 4 * BLOCK_SIZE] = pattern(4 * BLOCK_SIZE)[:]
    want[3 * BLOCK_SIZE + 5 : 3 * BLOCK_SIZE + 105] = b"c" * 100
    want[10:20] = b"mapped-st!"
    assert data == bytes(want)


# -- the asynchronous API -------------------------------------------------------------------


def test_many_requests_in_flight_from_one_thread_complete_out_of_order() -> None:
    from tests.fs.direct_devices import HeldBlockDevice, LateBlockDevice

    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    late = LateBlockDevice(disk, seed=5, delay=0.003)  # completions in any order
    dev = HeldBlockDevice(late)
    with mount(dev) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        # inside the size (holes): writes past the end would wait for each other, as each
        # zeroes from the old end on
        f.truncate(32 * BLOCK_SIZE)
        data = [pattern(BLOCK_SIZE, i) for i in range(32)]
        bufs = [aligned_buffer(BLOCK_SIZE) for _ in range(32)]
        ours = {id(b) for b in data + bufs}
        late.late = lambda req: any(id(seg.obj) in ours for seg in req.segments)  # data only
        for buf in data:
            dev.hold(buf)
        writes = [f.submit_write(i * BLOCK_SIZE, data[i]) for i in range(32)]
        dev.wait_held(32)  # all 32 in flight at once, submitted from this one thread
        assert not any(w.done() for w in writes)
        dev.release()
        assert [w.result(30) for w in writes] == [BLOCK_SIZE] * 32
        assert f.stat().st_size == 32 * BLOCK_SIZE
        reads = [f.submit_read(i * BLOCK_SIZE, bufs[i]) for i in range(32)]
        assert [r.result(30) for r in reads] == [BLOCK_SIZE] * 32
        for i, buf in enumerate(bufs):
            assert buf[:] == data[i][:]


@pytest.mark.parametrize("block", [True, False])
def test_aread_and_awrite_for_asyncio(block: bool) -> None:
    import asyncio

    disk: SimulatedBlockDevice | SimulatedPmem = (
        SimulatedBlockDevice(SIZE) if block else SimulatedPmem(SIZE)
    )
    mkfs(disk)
    with mount(disk) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:

        async def main() -> list[int]:
            wrote = await asyncio.gather(
                *(f.awrite(i * BLOCK_SIZE, pattern(BLOCK_SIZE, i)) for i in range(8))
            )
            bufs = [aligned_buffer(BLOCK_SIZE) for _ in range(8)]
            got = await asyncio.gather(*(f.aread(i * BLOCK_SIZE, bufs[i]) for i in range(8)))
            assert all(bufs[i][:] == pattern(BLOCK_SIZE, i)[:] for i in range(8))
            return [*wrote, *got]

        assert asyncio.run(main()) == [BLOCK_SIZE] * 16

        async def fails() -> None:
            await f.aread(0, bytearray(3) if block else memoryview(b"ro"))

        with pytest.raises((InvalidArgument, TypeError)):
            asyncio.run(fails())


def test_submit_checks_its_arguments_at_once(fs: FileSystem) -> None:
    with fs.open("/r", "wb") as w:
        w.write(b"x")
    with fs.open("/r", "rb", buffering=0, direct=True) as f:
        with pytest.raises(OSError, match="not open for writing") as info:
            f.submit_write(0, aligned_buffer(512))
        assert info.value.errno == errno.EBADF
        with pytest.raises(InvalidArgument, match="negative"):
            f.submit_read(-512, aligned_buffer(512))
        with pytest.raises(TypeError):
            f.submit_read(0, b"read-only")
    with pytest.raises(ValueError, match="closed"):
        f.submit_read(0, aligned_buffer(512))


def test_appending_threads_never_share_an_offset(fs: FileSystem) -> None:
    """O_APPEND direct writes take the end of file under the inode lock, as Linux does:
    threads appending at once (write, pwrite and submit_write in append mode) never write
    at the same offset, so every record is in the file exactly once."""
    records = 30
    barrier = threading.Barrier(3)

    def append(t: int) -> None:
        with fs.open("/log", "ab", buffering=0, direct=True) as f:
            barrier.wait()
            for i in range(records):
                record = pattern(512, t * records + i)
                if t == 0:
                    f.write(record)
                elif t == 1:
                    f.pwrite(record, 0)  # the offset is ignored in append mode
                else:
                    f.submit_write(0, record).result()

    threads = [threading.Thread(target=append, args=(t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with fs.open("/log", "rb") as f:
        data = f.read()
    assert len(data) == 3 * records * 512
    found = sorted(data[i : i + 512] for i in range(0, len(data), 512))
    assert found == sorted(bytes(pattern(512, s)) for s in range(3 * records))


# -- the fast path of a synchronous read of one written extent (DirectIO._read_mapped) ----


def test_a_read_inside_one_written_extent_takes_the_fast_path(fs: FileSystem) -> None:
    """Aligned reads inside one MAPPED extent go the fast path (counted); holes,
    unwritten blocks, reads across extents and mapped files go the request path;
    both give the bytes a model holds, clamped at the end of file."""
    data = bytes(pattern(4 * BLOCK_SIZE, 3))
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(4 * BLOCK_SIZE, 3), 0)
        stats = fs.direct.stats  # type: ignore[union-attr]
        fast = stats["mapped_reads"]
        buf = aligned_buffer(2 * BLOCK_SIZE)
        assert f.preadinto(buf, BLOCK_SIZE) == 2 * BLOCK_SIZE
        assert bytes(buf) == data[BLOCK_SIZE : 3 * BLOCK_SIZE]
        assert stats["mapped_reads"] == fast + 1
        f.truncate(4 * BLOCK_SIZE - 700)  # the end inside a sector: clamped, zeroed past it
        buf[:] = b"\xee" * len(buf)
        assert f.preadinto(buf, 3 * BLOCK_SIZE) == BLOCK_SIZE - 700
        assert bytes(buf[: BLOCK_SIZE - 700]) == data[3 * BLOCK_SIZE : -700]
        assert bytes(buf[BLOCK_SIZE - 700 : BLOCK_SIZE - 512]) == bytes(188)
        assert stats["mapped_reads"] == fast + 2
        assert f.preadinto(buf, 8 * BLOCK_SIZE) == 0  # past the end: the request path
        f.pwrite(pattern(BLOCK_SIZE, 4), 8 * BLOCK_SIZE)  # blocks 4..7 a hole
        f.fallocate(10 * BLOCK_SIZE, BLOCK_SIZE, 0)  # UNWRITTEN
        f.truncate(12 * BLOCK_SIZE)
        before = stats["mapped_reads"]
        for pos, n in ((5 * BLOCK_SIZE, BLOCK_SIZE), (10 * BLOCK_SIZE, BLOCK_SIZE)):
            out = aligned_buffer(n)
            out[:] = b"\xee" * n
            assert f.preadinto(out, pos) == n
            assert bytes(out) == bytes(n)
        across = aligned_buffer(6 * BLOCK_SIZE)
        assert f.preadinto(across, 3 * BLOCK_SIZE) == 6 * BLOCK_SIZE
        assert bytes(across[: BLOCK_SIZE - 700]) == data[3 * BLOCK_SIZE : -700]
        assert bytes(across[5 * BLOCK_SIZE :]) == bytes(pattern(BLOCK_SIZE, 4))
        assert stats["mapped_reads"] == before  # none of those was one written extent
        m = f.mmap(0, BLOCK_SIZE)
        try:
            m[:5] = b"store"
            assert f.pread(BLOCK_SIZE, 0)[:5] == b"store"  # through the request path
            assert stats["mapped_reads"] == before
        finally:
            m.close()


def test_random_reads_agree_with_a_model_on_both_paths(fs: FileSystem) -> None:
    """A file of random direct writes, fallocated ranges, holes and truncates; then
    random aligned direct reads: each returns what the model holds (zeros in holes
    and unwritten blocks, clamped at the end), through both paths."""
    import random

    rng = random.Random(11)
    model = bytearray()
    with fs.open("/r", "wb+", buffering=0, direct=True) as f:
        for i in range(40):
            choice = rng.random()
            pos = rng.randrange(0, 48) * 512
            n = rng.randrange(1, 16) * 512
            if choice < 0.6:
                buf = pattern(n, i)
                f.pwrite(buf, pos)
                if len(model) < pos + n:
                    model.extend(bytes(pos + n - len(model)))
                model[pos : pos + n] = bytes(buf)
            elif choice < 0.8:
                f.fallocate(pos, n, 0)
                if len(model) < pos + n:
                    model.extend(bytes(pos + n - len(model)))
            else:
                size = rng.randrange(0, 40 * 512) + rng.choice((0, 100))
                f.truncate(size)
                del model[size:]
                model.extend(bytes(size - len(model)))
        stats = fs.direct.stats  # type: ignore[union-attr]
        fast = stats["mapped_reads"]
        reads = 300
        for _ in range(reads):
            pos = rng.randrange(0, 56) * 512
            n = rng.randrange(1, 12) * 512
            out = aligned_buffer(n)
            got = f.preadinto(out, pos)
            expect = bytes(model[pos : pos + n])
            assert got == len(expect)
            assert bytes(out[:got]) == expect
        assert 0 < stats["mapped_reads"] - fast < reads  # both paths were taken


@pytest.mark.parametrize("short", [False, True])
def test_a_failed_fast_read_reaches_the_caller_and_releases_its_range(short: bool) -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    faulty = FaultyBlockDevice(disk)
    with (
        mount(faulty, layout_timeout=0.2) as fs,
        fs.open("/f", "wb+", buffering=0, direct=True) as f,
    ):
        f.pwrite(pattern(3 * BLOCK_SIZE, 5), 0)
        stats = fs.direct.stats  # type: ignore[union-attr]
        fast, failed = stats["mapped_reads"], stats["failed"]
        faulty.arm("read", 1, short=short)
        with pytest.raises(OSError, match=r"rror|short") as info:
            f.preadinto(aligned_buffer(3 * BLOCK_SIZE), 0)
        assert info.value.errno == errno.EIO
        assert "/f" in str(info.value)
        assert stats["mapped_reads"] == fast + 1
        assert stats["failed"] == failed + 1
        faulty.disarm()
        f.truncate(BLOCK_SIZE, nowait=True)  # the range lock is free again
        assert f.pread(BLOCK_SIZE, 0) == bytes(pattern(BLOCK_SIZE, 5))


def test_truncate_waits_for_a_fast_read_in_flight() -> None:
    """A synchronous read held in the device holds its range: a truncate of it fails
    with EAGAIN (nowait) and EBUSY (layout_timeout); once released, the read has
    every byte and the truncate goes."""
    from tests.fs.direct_devices import HeldBlockDevice

    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    dev = HeldBlockDevice(disk)
    with mount(dev, layout_timeout=0.2) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(4 * BLOCK_SIZE, 6), 0)
        out = aligned_buffer(2 * BLOCK_SIZE)
        dev.hold(out)
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.append(f.preadinto(out, BLOCK_SIZE)))
        reader.start()
        dev.wait_held(1)
        with pytest.raises(OSError, match="in progress") as again:
            f.truncate(BLOCK_SIZE, nowait=True)
        assert again.value.errno == errno.EAGAIN
        with pytest.raises(OSError, match="in progress") as busy:
            f.truncate(2 * BLOCK_SIZE)
        assert busy.value.errno == errno.EBUSY
        dev.release()
        reader.join(10)
        assert got == [2 * BLOCK_SIZE]
        assert bytes(out) == bytes(pattern(4 * BLOCK_SIZE, 6))[BLOCK_SIZE : 3 * BLOCK_SIZE]
        assert fs.direct.stats["mapped_reads"] >= 1  # type: ignore[union-attr]
        f.truncate(BLOCK_SIZE)
        assert f.stat().st_size == BLOCK_SIZE


def test_fast_reads_on_an_io_uring_image_are_inline(tmp_path: os.PathLike[str]) -> None:
    from daxfs.block import open_block
    from daxfs.block.uring import availability

    if availability():
        pytest.skip(f"io_uring unavailable: {availability()}")
    path = os.path.join(os.fspath(tmp_path), "img")
    mkfs(path, size=SIZE, dax="never")
    with (
        open_block(path, engine="io_uring") as bdev,
        mount(bdev) as fs,
        fs.open("/f", "wb+", buffering=0, direct=True) as f,
    ):
        f.pwrite(pattern(16 * BLOCK_SIZE, 7), 0)
        inline = bdev.statistics()["inline"]
        for k in range(16):
            assert (
                f.pread(BLOCK_SIZE, k * BLOCK_SIZE)
                == bytes(pattern(16 * BLOCK_SIZE, 7))[k * BLOCK_SIZE : (k + 1) * BLOCK_SIZE]
            )
        assert bdev.statistics()["inline"] >= inline + 16


# -- many reads in one call (File.preadinto_many, DirectIO.read_many) ----------------------


def test_preadinto_many_agrees_with_a_model(fs: FileSystem) -> None:
    """Items inside written extents go to the device together, the others (holes,
    unwritten, across extents, past the end) one by one: each gets the model's
    bytes; unaligned items fail with EINVAL before any I/O."""
    import random

    rng = random.Random(12)
    with fs.open("/m", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(8 * BLOCK_SIZE, 1), 0)
        f.pwrite(pattern(2 * BLOCK_SIZE, 2), 12 * BLOCK_SIZE)
        f.fallocate(16 * BLOCK_SIZE, 2 * BLOCK_SIZE, 0)
        f.truncate(19 * BLOCK_SIZE - 300)
        model = bytearray(19 * BLOCK_SIZE - 300)
        model[: 8 * BLOCK_SIZE] = bytes(pattern(8 * BLOCK_SIZE, 1))
        model[12 * BLOCK_SIZE : 14 * BLOCK_SIZE] = bytes(pattern(2 * BLOCK_SIZE, 2))
        stats = fs.direct.stats  # type: ignore[union-attr]
        fast = stats["mapped_reads"]
        items = []
        for _ in range(200):
            pos = rng.randrange(0, 20 * 8) * 512
            items.append((pos, aligned_buffer(rng.randrange(1, 9) * 512)))
        got = f.preadinto_many(items)
        for (pos, buf), n in zip(items, got, strict=True):
            expect = bytes(model[pos : pos + len(buf)])
            assert n == len(expect)
            assert bytes(buf[:n]) == expect
        assert 0 < stats["mapped_reads"] - fast < len(items)
        assert f.preadinto_many([]) == []
        untouched = aligned_buffer(512)
        with pytest.raises(InvalidArgument, match="multiple of"):
            f.preadinto_many([(0, untouched), (100, aligned_buffer(512))])
        assert bytes(untouched) == bytes(512)
    with fs.open("/m", "rb", buffering=0) as g:  # not direct: one preadinto each
        buf = bytearray(100)
        assert g.preadinto_many([(1, buf)]) == [100]
        assert bytes(buf) == bytes(model[1:101])


def test_preadinto_many_errors_and_a_write_in_flight() -> None:
    """EIO reaches the caller named and releases every range; an item whose range
    a write holds goes alone after the others and waits for it (no deadlock)."""
    from tests.fs.direct_devices import HeldBlockDevice

    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    dev = HeldBlockDevice(disk)
    with mount(dev, layout_timeout=0.2) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(4 * BLOCK_SIZE, 8), 0)
        dev.arm("read", 1)
        with pytest.raises(OSError, match="/f") as info:
            f.preadinto_many([(0, aligned_buffer(BLOCK_SIZE)), (BLOCK_SIZE, aligned_buffer(512))])
        assert info.value.errno == errno.EIO
        dev.disarm()
        f.truncate(4 * BLOCK_SIZE, nowait=True)  # every range released
        new = pattern(BLOCK_SIZE, 9)
        dev.hold(new)
        fut = f.submit_write(2 * BLOCK_SIZE, new)
        dev.wait_held(1)
        first, second = aligned_buffer(BLOCK_SIZE), aligned_buffer(BLOCK_SIZE)
        got: list[list[int]] = []
        reader = threading.Thread(
            target=lambda: got.append(f.preadinto_many([(0, first), (2 * BLOCK_SIZE, second)]))
        )
        reader.start()
        reader.join(0.1)
        assert got == []  # the second item waits for the write
        dev.release()
        assert fut.result(10) == BLOCK_SIZE
        reader.join(10)
        assert got == [[BLOCK_SIZE, BLOCK_SIZE]]
        assert bytes(first) == bytes(pattern(4 * BLOCK_SIZE, 8))[:BLOCK_SIZE]
        assert bytes(second) == bytes(new)


def test_a_short_read_on_io_uring_reaches_the_caller(tmp_path: os.PathLike[str]) -> None:
    """End to end on the real io_uring inline path: the image file is cut short under
    the mount, so the device returns a short read: the direct read (one and many)
    fails with EIO naming the file, and its range is released."""
    from daxfs.block import open_block
    from daxfs.block.uring import availability

    if availability():
        pytest.skip(f"io_uring unavailable: {availability()}")
    path = os.path.join(os.fspath(tmp_path), "img")
    mkfs(path, size=SIZE, dax="never")
    with (
        open_block(path, engine="io_uring") as bdev,
        mount(bdev) as fs,
        fs.open("/f", "wb+", buffering=0, direct=True) as f,
    ):
        f.pwrite(pattern(4 * BLOCK_SIZE, 9), 0)
        ext = next(iter(fs.maps.extents(fs.store, f.inode, 0)))
        inline = bdev.statistics()["inline"]
        os.truncate(path, ext.pblk * BLOCK_SIZE + BLOCK_SIZE)  # blocks 1.. of the file gone
        assert f.pread(BLOCK_SIZE, 0) == bytes(pattern(BLOCK_SIZE, 9))
        with pytest.raises(OSError, match="/f") as one:
            f.preadinto(aligned_buffer(2 * BLOCK_SIZE), BLOCK_SIZE)
        assert one.value.errno == errno.EIO
        with pytest.raises(OSError, match="/f") as many:
            f.preadinto_many(
                [(0, aligned_buffer(BLOCK_SIZE)), (2 * BLOCK_SIZE, aligned_buffer(512))]
            )
        assert many.value.errno == errno.EIO
        assert bdev.statistics()["inline"] >= inline + 4  # the inline paths were taken
        f.truncate(BLOCK_SIZE, nowait=True)  # no range left locked
