"""DAX mmap: mapping file extents, msync of a range, fixed placement, truncate under maps."""

from __future__ import annotations

import ctypes
import errno
import mmap as pymmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import daxfs
from daxfs.fs.fsck import fsck
from daxfs.fs.inode import Inode
from daxfs.mm import MS_ASYNC, MS_INVALIDATE, MS_SYNC, Mapping
from daxfs.mm.vm import PAGE_SIZE, AddressSpace, Kernel
from daxfs.testing import SimulatedPmem
from tests import helpers

BLOCK = 4096
SIZE = 32 << 20


@pytest.fixture
def dev() -> SimulatedPmem:
    return helpers.formatted(SIZE)


@pytest.fixture
def fs(dev: SimulatedPmem) -> Iterator[daxfs.FileSystem]:
    with daxfs.mount(dev) as filesystem:
        yield filesystem


def make_file(fs: daxfs.FileSystem, path: str, data: bytes) -> None:
    with fs.open(path, "wb", buffering=0) as f:
        f.write(data)


def fragmented(fs: daxfs.FileSystem, path: str, blocks: int) -> bytes:
    """A file of ``blocks`` blocks in as many extents (every other block first)."""
    with fs.open(path, "wb", buffering=0) as f:
        for i in range(0, blocks, 2):
            f.pwrite(bytes([i % 251 + 1]) * BLOCK, i * BLOCK)
        for i in range(1, blocks, 2):
            f.pwrite(bytes([i % 251 + 1]) * BLOCK, i * BLOCK)
    with fs.open(path, "rb") as f:
        return f.read()


def address_of(buffer: object) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))  # type: ignore[arg-type]


# -- mapping and reading/writing through it ----------------------------------------------


def test_write_through_mapping_then_read(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", b"a" * 10000)
    with fs.open("/f", "rb+", buffering=0) as f, f.mmap() as m:
        assert isinstance(m, Mapping)
        assert len(m) == 10000
        assert m[0:3] == b"aaa"
        m[100:105] = b"hello"
        m.msync(100, 5)
        assert f.pread(5, 100) == b"hello"  # same device memory: no copy, no cache
        f.pwrite(b"WORLD", 200)
        assert m[200:205] == b"WORLD"
        with memoryview(m) as view:
            assert view.nbytes == 10000
            assert not view.readonly


def test_fragmented_file_is_one_contiguous_mapping(fs: daxfs.FileSystem) -> None:
    data = fragmented(fs, "/frag", 64)
    with fs.open("/frag", "rb+", buffering=0) as f, f.mmap() as m:
        assert len(m._pieces) >= 2  # several extents behind one address range
        assert m[:] == data
        m[BLOCK - 10 : BLOCK + 10] = b"Z" * 20  # across an extent boundary
        m.msync()
        assert f.pread(20, BLOCK - 10) == b"Z" * 20


def test_map_a_range_of_the_file(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", bytes(range(256)) * 64)
    with fs.open("/f", "rb+", buffering=0) as f, f.mmap(BLOCK, 2 * BLOCK) as m:
        assert m.offset == BLOCK
        assert m[0:4] == bytes(range(4))
        m[0:1] = b"\xff"
        assert f.pread(1, BLOCK) == b"\xff"


def test_writable_mapping_allocates_holes(fs: daxfs.FileSystem) -> None:
    with fs.open("/sparse", "wb+", buffering=0) as f:
        f.truncate(8 * BLOCK)
        assert fs.stat("/sparse").st_blocks == 0
        with f.mmap() as m:
            assert m[:] == bytes(8 * BLOCK)
            assert fs.stat("/sparse").st_blocks == 8 * BLOCK // 512
            m[5 * BLOCK : 5 * BLOCK + 3] = b"abc"
            m.msync()
        assert f.pread(3, 5 * BLOCK) == b"abc"


def test_read_mapping_of_a_hole_sees_later_writes(fs: daxfs.FileSystem) -> None:
    with fs.open("/sparse", "wb+", buffering=0) as f:
        f.truncate(4 * BLOCK)
        with f.mmap(access="read") as m:
            assert m[BLOCK : BLOCK + 4] == bytes(4)
            f.pwrite(b"data", BLOCK)  # allocates the hole: the mapping is refreshed
            assert m[BLOCK : BLOCK + 4] == b"data"
            with pytest.raises(TypeError, match="read-only"):
                m[0:1] = b"x"
            with memoryview(m) as view:
                assert view.readonly


def test_numpy_array_over_a_mapping(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/arr", np.arange(4096, dtype=np.float64).tobytes())
    with fs.open("/arr", "rb+", buffering=0) as f:
        m = f.mmap()
        a = m.asarray(np.float64)
        assert a.shape == (4096,)
        assert a.sum() == sum(range(4096))
        a[10] = -1.0
        grid = m.asarray(np.float64, shape=(64, 64))
        assert grid[0, 10] == -1.0
        m.msync(80, 8)
        assert np.frombuffer(f.pread(8, 80), np.float64)[0] == -1.0
        with pytest.raises(BufferError):
            m.close()  # arrays are alive
        del a, grid
        m.close()
        assert m.closed


def test_asarray_bad_arguments(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", bytes(100))
    with fs.open("/f", "rb+", buffering=0) as f, f.mmap() as m:
        for kwargs in (
            {"dtype": np.float64},  # 100 bytes is not a whole number of float64
            {"dtype": np.uint8, "shape": (11, 10)},
            {"dtype": np.uint8, "offset": 101},
            {"dtype": np.uint8, "offset": -1},
            {"dtype": "not a dtype"},
            {"dtype": np.uint8, "shape": (-1,)},
        ):
            with pytest.raises(ValueError, match=r"\w") as info:
                m.asarray(**kwargs)  # type: ignore[arg-type]
            assert getattr(info.value, "errno", errno.EINVAL) == errno.EINVAL


# -- msync --------------------------------------------------------------------------------


def test_msync_persists_exactly_its_range(dev: SimulatedPmem, fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", bytes(16 * BLOCK))
    with fs.open("/f", "rb+", buffering=0) as f, f.mmap() as m:
        m[0:64] = b"A" * 64
        m[8 * BLOCK : 8 * BLOCK + 64] = b"B" * 64
        a_dev = m._pieces[0].dev
        assert a_dev is not None
        b_piece = m._covering(8 * BLOCK, 8 * BLOCK + 64)[0]
        b_dev = b_piece.dev + 8 * BLOCK - b_piece.start  # type: ignore[operator]

        def is_pending(addr: int) -> bool:
            return any(off <= addr < off + n for off, n in dev.pending())

        assert is_pending(a_dev)
        assert is_pending(b_dev)
        m.msync(0, 64)
        assert not is_pending(a_dev)  # exactly the asked range left the pending set
        assert is_pending(b_dev)
        states = [s.read(a_dev, 64) for s in dev.crash_states(limit=16)]
        assert all(s == b"A" * 64 for s in states)
        assert bytes(64) in {s.read(b_dev, 64) for s in dev.crash_states(limit=16)}


def test_msync_flags_and_ranges(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", bytes(3 * BLOCK))
    with fs.open("/f", "rb+", buffering=0) as f, f.mmap() as m:
        m.msync(0, 0)  # length 0: nothing, as msync(2)
        m.msync(flags=MS_ASYNC)
        m.msync(flags=MS_SYNC | MS_INVALIDATE)
        for flags in (MS_SYNC | MS_ASYNC, 0x80, -1):
            with pytest.raises(ValueError, match="invalid flags") as info:
                m.msync(flags=flags)
            assert info.value.errno == errno.EINVAL  # type: ignore[attr-defined]
        for offset, length in ((0, 3 * BLOCK + 1), (3 * BLOCK, 1), (-1, 4), (0, -4)):
            with pytest.raises(ValueError, match="msync") as info:
                m.msync(offset, length)
            assert info.value.errno == errno.EINVAL  # type: ignore[attr-defined]


def test_fsync_persists_mapped_ranges(dev: SimulatedPmem, fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", bytes(4 * BLOCK))
    with fs.open("/f", "rb+", buffering=0) as f, f.mmap() as m:
        m[3 * BLOCK : 3 * BLOCK + 8] = b"fsynced!"
        f.fsync()
        addr = m._covering(3 * BLOCK, 3 * BLOCK + 8)[0]
        dev_off = addr.dev + 3 * BLOCK - addr.start  # type: ignore[operator]
        assert {s.read(dev_off, 8) for s in dev.crash_states(limit=8)} == {b"fsynced!"}


# -- fixed placement ----------------------------------------------------------------------


def test_noreplace_against_another_daxfs_mapping(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", b"x" * BLOCK)
    make_file(fs, "/g", b"y" * BLOCK)
    with fs.open("/f", "rb+", buffering=0) as f, fs.open("/g", "rb+", buffering=0) as g:
        with f.mmap() as first:
            with pytest.raises(FileExistsError, match="in use") as info:
                g.mmap(address=first.address, fixed="noreplace")
            assert info.value.errno == errno.EEXIST
            assert first[0:1] == b"x"  # untouched
            first[0:1] = b"z"
            assert f.pread(1, 0) == b"z"
        with f.mmap() as again:  # the address is free again once the first is closed
            addr = again.address
        with g.mmap(address=addr, fixed="noreplace") as placed:
            assert placed.address == addr
            assert placed[0:1] == b"y"


def test_noreplace_against_memory_daxfs_does_not_own(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", b"x" * BLOCK)
    foreign = pymmap.mmap(-1, 2 * BLOCK)
    foreign[0:5] = b"mine!"
    addr = address_of(foreign)
    with fs.open("/f", "rb+", buffering=0) as f:
        with pytest.raises(FileExistsError):
            f.mmap(address=addr, fixed="noreplace")
        with pytest.raises(FileExistsError, match="does not own") as info:
            f.mmap(address=addr, fixed="replace")
        assert "MAP_FIXED" in str(info.value)
    assert foreign[0:5] == b"mine!"  # intact: nothing was clobbered
    foreign.close()


def test_replace_over_a_daxfs_mapping_invalidates_it(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", b"f" * 2 * BLOCK)
    make_file(fs, "/g", b"g" * BLOCK)
    with fs.open("/f", "rb+", buffering=0) as f, fs.open("/g", "rb+", buffering=0) as g:
        old = f.mmap()
        view = memoryview(old)
        with pytest.raises(OSError, match="live buffers") as info:
            g.mmap(address=old.address, fixed="replace")
        assert info.value.errno == errno.EBUSY
        view.release()
        new = g.mmap(address=old.address, fixed="replace")
        assert new.address == old.address
        assert new[0:1] == b"g"
        with pytest.raises(ValueError, match="replaced"):
            old.msync()
        with pytest.raises(ValueError, match="replaced"):
            _ = old[0]
        with pytest.raises(ValueError, match="closed"):
            memoryview(old)
        old.close()  # harmless
        new.close()


def test_kernel_that_ignores_noreplace(fs: daxfs.FileSystem) -> None:
    class OldKernel(Kernel):  # Linux < 4.17: the flag is ignored, the hint is not honoured
        def __init__(self) -> None:
            self.unmapped: list[tuple[int, int]] = []

        def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, off: int) -> int:
            if flags & 0x100000:
                return super().mmap(0, length, prot, flags & ~0x100000, fd, off)
            return super().mmap(addr, length, prot, flags, fd, off)

        def munmap(self, addr: int, length: int) -> None:
            self.unmapped.append((addr, length))
            super().munmap(addr, length)

    make_file(fs, "/f", b"x" * BLOCK)
    from daxfs.mm.mapping import map_file

    with fs.open("/f", "rb+", buffering=0) as f, f.mmap() as taken:
        kernel = OldKernel()
        with f.inode.lock, pytest.raises(FileExistsError, match="ignored"):
            args = ("write", taken.address, "noreplace", [], AddressSpace(kernel))
            map_file(f, fs.data, 0, None, *args)
        assert len(kernel.unmapped) == 1  # what it placed elsewhere was unmapped again
        assert taken[0:1] == b"x"


# -- truncate, growth, lifetime -----------------------------------------------------------


def test_truncate_under_a_mapping(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", b"q" * 4 * BLOCK)
    with fs.open("/f", "rb+", buffering=0) as f:
        m = f.mmap()
        f.truncate(BLOCK + 10)
        assert m[0:2] == b"qq"  # the first page still maps the file
        assert m[BLOCK + 9 : BLOCK + 11] == b"q\x00"  # the tail of the kept block is zeroed
        assert m[2 * BLOCK : 2 * BLOCK + 4] == bytes(4)  # detached: zeros
        m[3 * BLOCK : 3 * BLOCK + 4] = b"lost"  # writes go nowhere
        with pytest.raises(OSError, match="detached") as info:
            m.msync(2 * BLOCK, BLOCK)
        assert info.value.errno == errno.ENOMEM
        m.msync(0, BLOCK)
        make_file(fs, "/other", b"S" * 8 * BLOCK)  # may reuse the freed blocks
        assert m[2 * BLOCK : 4 * BLOCK].count(b"S") == 0
        assert f.pread(4, 3 * BLOCK) == b""
        m.close()


def test_punch_hole_under_a_mapping(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", b"p" * 4 * BLOCK)
    with fs.open("/f", "rb+", buffering=0) as f, f.mmap() as m:
        f.fallocate(BLOCK, 2 * BLOCK, 0x02 | 0x01)  # PUNCH_HOLE | KEEP_SIZE
        assert m[0:1] == b"p"
        assert m[BLOCK : BLOCK + 1] == b"\x00"
        assert m[3 * BLOCK : 3 * BLOCK + 1] == b"p"


def test_growing_and_closing_the_file_keep_mappings(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", b"g" * BLOCK)
    f = fs.open("/f", "rb+", buffering=0)
    m = f.mmap()
    f.pwrite(b"more", 10 * BLOCK)
    f.close()
    m[0:4] = b"kept"
    m.msync()
    with fs.open("/f", "rb") as g:
        assert g.read(4) == b"kept"
    m.close()


def test_unmount_with_live_mappings_is_busy(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    make_file(fs, "/f", b"x" * BLOCK)
    f = fs.open("/f", "rb+", buffering=0)
    m = f.mmap()
    f.close()
    with pytest.raises(OSError, match="mapping") as info:
        fs.unmount()
    assert info.value.errno == errno.EBUSY
    m.close()
    fs.unmount()
    assert fsck(dev).clean


def test_unlink_while_mapped(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        make_file(fs, "/keep", b"k")  # keeps the root directory's tree non-empty
        make_file(fs, "/f", b"u" * 8 * BLOCK)
        with fs.open("/f", "rb+", buffering=0) as f:
            m = f.mmap()
        free = fs.statvfs("/").f_bfree
        fs.unlink("/f")
        assert m[0:1] == b"u"  # still mapped: the inode lives on the orphan list
        m[0:1] = b"v"
        assert fs.statvfs("/").f_bfree == free
        m.close()  # last user: the blocks are freed
        assert fs.statvfs("/").f_bfree == free + 8
    assert fsck(dev).clean


# -- crash semantics ----------------------------------------------------------------------


def test_msynced_stores_survive_every_crash(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    make_file(fs, "/f", bytes(4 * BLOCK))
    f = fs.open("/f", "rb+", buffering=0)
    m = f.mmap()
    m[0:16] = b"synced-16-bytes!"
    m.msync(0, 16)
    m[2 * BLOCK : 2 * BLOCK + 16] = b"not synced yet!!"
    seen = set()
    for state in dev.crash_states(limit=16):
        with daxfs.mount(state) as after, after.open("/f", "rb") as g:
            data = g.read()
        assert data[:16] == b"synced-16-bytes!"
        seen.add(data[2 * BLOCK : 2 * BLOCK + 16])
        assert fsck(state).clean
    assert bytes(16) in seen  # the unsynced store may be lost


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"offset": 100}, "multiple of"),
        ({"offset": -4096}, "non-negative"),
        ({"offset": 0, "length": 3 * BLOCK}, "beyond the end"),
        ({"length": 0}, "positive"),
        ({"length": 1.5}, "positive integer"),
        ({"access": "execute"}, "access"),
        ({"fixed": "sometimes", "address": 1 << 40}, "fixed"),
        ({"fixed": "noreplace"}, "needs an address"),
        ({"address": 12345}, "multiple of"),
    ],
)
def test_bad_arguments(fs: daxfs.FileSystem, kwargs: dict[str, object], match: str) -> None:
    make_file(fs, "/f", b"x" * 2 * BLOCK)
    with fs.open("/f", "rb+", buffering=0) as f:
        with pytest.raises(ValueError, match=match) as info:
            f.mmap(**kwargs)  # type: ignore[arg-type]
        assert info.value.errno == errno.EINVAL  # type: ignore[attr-defined]
        assert fs.statvfs("/").f_bfree > 0


def test_writable_mapping_needs_a_writable_file(fs: daxfs.FileSystem) -> None:
    make_file(fs, "/f", b"x" * BLOCK)
    with fs.open("/f", "rb", buffering=0) as f:
        with pytest.raises(PermissionError, match="not open for writing"):
            f.mmap()
        with f.mmap(access="read") as m:
            assert m[0:1] == b"x"


def test_file_image_maps_through_the_device_file(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    daxfs.mkfs(image, 16 << 20)
    with daxfs.mount(image) as fs:  # msync path: page-granular persistence
        make_file(fs, "/f", b"x" * 3 * BLOCK)
        with fs.open("/f", "rb+", buffering=0) as f, f.mmap() as m:
            m[BLOCK : BLOCK + 5] = b"mapfs"
            m.msync(BLOCK, 5)
    with daxfs.mount(image) as fs, fs.open("/f", "rb") as g:
        g.seek(BLOCK)
        assert g.read(5) == b"mapfs"
    assert os.path.getsize(image) == 16 << 20
    assert PAGE_SIZE == BLOCK


#: how long the lock-order test's events wait: far longer than it ever takes (never asserted)
PATIENCE = 60.0


@pytest.mark.timeout(120, method="signal")
def test_replace_frees_a_replaced_unlinked_file_without_holding_an_inode_lock(
    fs: daxfs.FileSystem,
) -> None:
    """Lock order: filesystem lock, then inode lock.  A fixed="replace" mapping over the
    last holder of an unlinked file frees that file, which takes the filesystem lock:
    it must do so after letting go of the lock of the inode it maps, or a thread that
    holds the filesystem lock and wants that inode (an open) deadlocks with it.

    Thread A maps /x over /y's mapping; when it comes to free /y, it waits until the
    main thread holds the filesystem lock, and the main thread then opens /x.  Before
    the fix A held /x's inode lock there: the open waited for A, A for the open's
    filesystem lock (ended by the pytest timeout, whose signal interrupts the open)."""
    make_file(fs, "/x", b"x" * 2 * BLOCK)
    make_file(fs, "/y", b"y" * 2 * BLOCK)
    fy = fs.open("/y", "rb+", buffering=0)
    y_map = fy.mmap()
    y_ino = fy.inode.ino
    fs.unlink("/y")
    fy.close()  # y_map is the last holder of /y
    reaping, fs_locked = threading.Event(), threading.Event()
    real_reap = fs.itable.reap
    assert real_reap is not None

    def reap(inode: Inode) -> None:
        if inode.ino == y_ino:
            reaping.set()
            fs_locked.wait(PATIENCE)
        real_reap(inode)

    fs.itable.reap = reap
    results: list[object] = []
    fx = fs.open("/x", "rb+", buffering=0)

    def map_over_y() -> None:
        try:
            results.append(fx.mmap(address=y_map.address, fixed="replace"))
        except BaseException as exc:  # pragma: no cover - reported below
            results.append(exc)

    a = threading.Thread(target=map_over_y, name="A")
    a.start()
    try:
        assert reaping.wait(PATIENCE), "the replace never came to free /y"
        with fs._lock:
            fs_locked.set()
            fs.open("/x", "rb").close()  # wants /x's inode lock (InodeTable.hold)
    finally:
        fs_locked.set()
        a.join()
    (x_map,) = results
    assert isinstance(x_map, daxfs.Mapping), repr(x_map)
    assert x_map[0:1] == b"x"
    assert y_map.closed
    assert fs.itable.cached(y_ino) is None  # /y was freed
    x_map.close()
    fx.close()
    with pytest.raises(daxfs.errors.Corrupted, match="free"):
        fs.itable.get(y_ino)
