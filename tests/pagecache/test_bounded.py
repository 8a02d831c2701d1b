"""BoundedBlockCache (daxfs.pagecache.bounded) and the filesystem mounted with cache_size.

The cache alone: it passes every Device's conformance suite, routes each page
by its mode (paged: the page cache; owned: the memfd) and keeps the two
coherent.  Mounted: file data stays within cache_size, metadata is loaded as
touched, bytes are right after remounts, faults reach the caller, and the
model-based workloads (fsx, nsstress) pass with a cache small enough to evict.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Iterator

import pytest

from daxfs.block.cache import BlockCache
from daxfs.errors import InvalidArgument
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mkfs, mount
from daxfs.pagecache.bounded import DEVICE_POOL, BoundedBlockCache
from daxfs.pmem.device import Device
from daxfs.testing.blockfaults import FaultyBlockDevice
from daxfs.testing.device_tests import DeviceTests
from daxfs.testing.simblock import SimulatedBlockDevice
from daxfs.testing.simulated import SimulatedPmem
from tests.testing.known_bugs import SLOW_SECONDS

PAGE = 4096
MIB = 1 << 20


class TestBoundedCacheConformance(DeviceTests):
    """The suite every Device passes, on a cache of 16 pages over 256 KiB."""

    @pytest.fixture
    def device(self) -> Iterator[Device]:
        dev = BoundedBlockCache(SimulatedBlockDevice(256 * 1024), "64K", own=True)
        yield dev
        if not dev.closed:
            dev.close()

    def test_size_and_properties(self, device: Device) -> None:
        assert device.size == 256 * 1024
        assert device.persist_method == "bio"
        assert not device.closed


def image(size: int = MIB, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def test_nothing_is_read_at_open_and_reads_are_the_device() -> None:
    disk = SimulatedBlockDevice(MIB, image=image())
    with BoundedBlockCache(disk, "64K") as cache:
        assert cache.stats["loaded"] == 0
        assert cache.owned_bytes == 0
        assert cache.read(5000, 20000) == disk.image()[5000:25000]
        assert cache.owned_bytes == 0  # copies do not load the memfd
        assert cache.pages.pool.resident <= 64 * 1024
        assert cache.native_region() is None


def test_direct_access_owns_and_sees_page_cache_writes() -> None:
    """A page written through the page cache (dirty there), then viewed: the view
    shows the write (the page cache's copy was written back before the load)."""
    disk = SimulatedBlockDevice(MIB, image=image())
    with BoundedBlockCache(disk, "64K") as cache:
        cache.write(3 * PAGE + 10, b"through the page cache", drain=False)
        assert cache.pages.pool.dirty == PAGE
        view = cache.direct_access(3 * PAGE, PAGE)
        assert bytes(view[10:32]) == b"through the page cache"
        assert cache.owned_bytes == PAGE
        assert cache.pages.cached(3 * PAGE, PAGE) == 0  # dropped from the page cache
        # owned now: copies go to the memfd, so the view sees them
        cache.write(3 * PAGE + 100, b"into the view", drain=False)
        assert bytes(view[100:113]) == b"into the view"
        view.release()
        cache.drain()
        expect = bytearray(image())
        expect[3 * PAGE + 10 : 3 * PAGE + 32] = b"through the page cache"
        expect[3 * PAGE + 100 : 3 * PAGE + 113] = b"into the view"
        assert disk.durable_image() == expect


def test_copies_straddling_owned_and_paged_pages() -> None:
    disk = SimulatedBlockDevice(MIB, image=image())
    model = bytearray(disk.image())
    with BoundedBlockCache(disk, "64K") as cache:
        cache.ensure(2 * PAGE, 2 * PAGE)  # pages 2, 3 owned; 0, 1, 4.. paged
        data = random.Random(3).randbytes(5 * PAGE)
        cache.write(PAGE // 2, data, drain=False)
        model[PAGE // 2 : PAGE // 2 + len(data)] = data
        cache.fill(3 * PAGE - 7, 3 * PAGE, 0xAB, drain=False)
        model[3 * PAGE - 7 : 6 * PAGE - 7] = b"\xab" * (3 * PAGE)
        assert cache.read(0, 8 * PAGE) == model[: 8 * PAGE]
        cache.drain()
        assert disk.durable_image() == model
        assert cache.pending() == []


def test_drain_writes_back_pages_then_flushes() -> None:
    disk = SimulatedBlockDevice(MIB)
    with BoundedBlockCache(disk, "64K") as cache:
        cache.write(0, b"x" * 100, drain=False)
        assert disk.image()[:100] == bytes(100)  # not written yet
        assert cache.pending() == [(0, PAGE)]
        flushes = disk.flush_count
        cache.drain()
        assert disk.durable_image()[:100] == b"x" * 100
        assert disk.flush_count == flushes + 1  # a FLUSH, not a FUA write
        assert cache.pending() == []


def test_memory_is_bounded_under_a_big_write_and_read() -> None:
    disk = SimulatedBlockDevice(4 * MIB)
    data = image(3 * MIB, seed=4)
    with BoundedBlockCache(disk, "128K") as cache:
        cache.write(0, data)
        assert cache.read(0, 3 * MIB) == data
        assert cache.pages.pool.stats.peak * PAGE <= 128 * 1024
        assert cache.owned_bytes == 0
    assert disk.durable_image()[: 3 * MIB] == data


def test_load_error_is_eio_and_owns_nothing() -> None:
    faulty = FaultyBlockDevice(SimulatedBlockDevice(MIB, image=image()))
    with BoundedBlockCache(faulty, "64K") as cache:
        faulty.arm("read", 1)
        with pytest.raises(OSError, match="loading bytes") as info:
            cache.direct_access(PAGE, PAGE)
        assert info.value.errno == errno.EIO
        assert cache.owned_bytes == 0
        view = cache.direct_access(PAGE, PAGE)
        assert bytes(view) == image()[PAGE : 2 * PAGE]
        view.release()


def test_bad_cache_sizes() -> None:
    disk = SimulatedBlockDevice(MIB)
    for bad in ("lots", "0", -5, "12K"):
        with pytest.raises(InvalidArgument):
            BoundedBlockCache(disk, bad)
    with pytest.raises(OSError, match="memory available") as info:
        BoundedBlockCache(disk, "1G", memory_limit=64 << 20)
    assert info.value.errno == errno.ENOMEM
    assert not disk.closed


# -- mounted ------------------------------------------------------------------------------


def fresh(size: int = 32 * MIB) -> SimulatedBlockDevice:
    disk = SimulatedBlockDevice(size)
    mkfs(disk)
    return disk


def test_mount_with_cache_size_is_bounded_and_right() -> None:
    disk = fresh()
    rng = random.Random(5)
    files = {f"/d/f{i}": rng.randbytes(rng.randrange(1, 700_000)) for i in range(12)}
    with mount(disk, cache_size="256K") as fs:
        cache = fs.device
        assert isinstance(cache, BoundedBlockCache)
        assert fs.data.reader is None  # the C read fast path is off
        fs.mkdir("/d")
        for path, data in files.items():
            with fs.open(path, "wb") as f:
                f.write(data)
        for path, data in files.items():
            with fs.open(path, "rb") as f:
                assert f.read() == data
        pool = cache.files  # file data: the files' address spaces (daxfs.fs.filecache)
        assert pool.stats.peak * PAGE <= 256 * 1024
        assert pool.stats.evictions > 0
        assert pool.stats.extra["write_through"] > 0
        # the device's own page cache: the fixed overhead beside cache_size
        assert cache.pages.pool.stats.peak * PAGE <= DEVICE_POOL
        # the file data (5 MiB or so) never entered the memfd: what did is metadata
        # and the journal's region (1 MiB here)
        assert cache.owned_bytes < 2 * MIB
    assert fsck(disk).clean
    with mount(disk, cache_size="64K") as fs:
        for path, data in files.items():
            with fs.open(path, "rb") as f:
                assert f.read() == data
    with mount(disk) as fs:  # the whole-device cache agrees
        for path, data in files.items():
            assert fs.open(path, "rb").read() == data


def test_mount_reads_only_what_it_touches() -> None:
    disk = fresh(64 * MIB)
    with mount(disk) as fs:
        fs.open("/f", "wb").write(b"x")
    with mount(disk, cache_size="64K") as fs:
        loaded = fs.device.stats["loaded"]
        assert loaded < 4 * MIB  # the journal region and a few metadata blocks
        assert fs.open("/f", "rb").read() == b"x"


def test_truncate_punch_and_mmap_coherent() -> None:
    """Buffered writes, truncate, punch-hole and a DAX-style mmap of the cache: every
    byte as the model says, across a remount."""
    disk = fresh()
    model = bytearray(random.Random(6).randbytes(300_000))
    with mount(disk, cache_size="64K") as fs, fs.open("/f", "wb+", buffering=0) as f:
        f.write(model)
        f.truncate(200_000)
        del model[200_000:]
        f.fallocate(10_000, 50_000, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
        model[10_000:60_000] = bytes(50_000)
        m = f.mmap()
        try:
            m[0:5] = b"hello"
            model[0:5] = b"hello"
            m.msync(0, 5)
        finally:
            m.close()
        f.seek(0)
        assert f.read() == model
        f.write(b"tail")
        model += b"tail"
        f.seek(0)
        assert f.read() == model
    with mount(disk, cache_size="64K") as fs:
        assert fs.open("/f", "rb").read() == model


def test_cache_size_for_a_dax_mount_is_einval(tmp_path: object) -> None:
    pmem = SimulatedPmem(32 * MIB)
    mkfs(pmem)
    with pytest.raises(InvalidArgument, match="cache_size is for a block-backed mount"):
        mount(pmem, cache_size="64M")
    with mount(pmem, dax="never", cache_size="64M") as fs:
        assert isinstance(fs.device, BoundedBlockCache)
    with pytest.raises(InvalidArgument, match="not a size"):
        mount(SimulatedBlockDevice(32 * MIB), cache_size="sixty")
    with BlockCache(fresh()) as cache, pytest.raises(InvalidArgument, match="made already"):
        mount(cache, cache_size="64M")


def test_eio_on_a_data_miss_reaches_the_reader() -> None:
    inner = fresh()
    with mount(inner) as fs:
        fs.open("/f", "wb").write(b"y" * 100_000)
    faulty = FaultyBlockDevice(inner)
    with mount(faulty, cache_size="64K") as fs:
        f = fs.open("/f", "rb", buffering=0)
        faulty.arm("read", 1)
        with pytest.raises(OSError, match="through the page cache") as info:
            f.read(10)
        assert info.value.errno == errno.EIO
        faulty.disarm()
        assert f.read(10) == b"y" * 10  # nothing wrong was cached
        f.close()


def test_fault_harness_on_a_bounded_mount() -> None:
    """Every write request of a data write failing (EIO), on a bounded mount: the write
    raises or completes; before-or-after on the disk; nothing committed is lost."""
    from daxfs.testing.blockfaults import check_fs_block_faults

    def setup(fs: object) -> None:
        fs.open("/f", "wb").write(b"a" * 50_000)  # type: ignore[attr-defined]

    def op(fs: object) -> None:
        with fs.open("/f", "r+b") as f:  # type: ignore[attr-defined]
            f.seek(3000)
            f.write(b"b" * 120_000)

    for kind in ("write", "read", "flush"):
        report = check_fs_block_faults(setup, op, kind, cache_size="64K")
        assert report.points >= 1, kind
        assert report.states >= report.points


def test_fsx_with_a_small_cache() -> None:
    from daxfs.testing.fsx import FsxOptions, run

    stats = run(seed=11, ops=400, options=FsxOptions(block=True, cache_size="64K"))
    assert stats.ops == 400
    assert stats.remounts >= 3
    assert stats.crashes >= 1
    assert stats.by_kind.get("mapwrite", 0) >= 1


@pytest.mark.parametrize("full", [False, True])
def test_nsstress_with_a_small_cache(full: bool) -> None:
    from daxfs.testing import nsstress
    from tests.testing.known_bugs import NSSTRESS_WITHOUT

    o = nsstress.StressOptions.full() if full else nsstress.StressOptions()
    o.skip = frozenset(NSSTRESS_WITHOUT)
    o.block = True
    o.cache_size = "64K"
    stress = nsstress.Stress(1, o)
    cache = stress.fs.device
    assert isinstance(cache, BoundedBlockCache)
    stats = stress.run(ops=300)
    assert stats.checks == 2
    if full:
        assert stats.errors.get("ENOSPC", 0) > 0


def test_threads_copies_loads_and_drains_check_every_byte() -> None:
    """Writers own disjoint stripes and write through the copies (paged or owned, as
    the pages happen to be); other threads own random pages (views) and drain, all at
    once. At the end the memfd, the page cache and the disk all agree with the model."""
    import threading

    size = 2 * MIB
    disk = SimulatedBlockDevice(size, image=image(size, seed=8))
    model = bytearray(disk.image())
    stripes = 4
    stripe = size // stripes
    errors: list[BaseException] = []
    with BoundedBlockCache(disk, "64K") as cache:

        def writer(k: int) -> None:
            try:
                rng = random.Random(k)
                for _ in range(150):
                    off = k * stripe + rng.randrange(stripe - 3 * PAGE)
                    data = rng.randbytes(rng.randrange(1, 3 * PAGE))
                    cache.write(off, data, drain=rng.random() < 0.2)
                    model[off : off + len(data)] = data
                    got = cache.read(off, len(data))
                    assert got == data, (k, off)
            except BaseException as exc:
                errors.append(exc)

        def owner(seed: int) -> None:
            try:
                rng = random.Random(100 + seed)
                for _ in range(150):
                    page = rng.randrange(size // PAGE)
                    view = cache.direct_access(page * PAGE, PAGE)
                    view.release()
                    if rng.random() < 0.3:
                        cache.drain()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(stripes)]
        threads += [threading.Thread(target=owner, args=(s,)) for s in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert cache.owned_bytes > 0
        assert cache.pages.pool.stats.evictions > 0
        assert cache.read(0, size) == model
        cache.drain()
        view = cache.direct_access(0, size)  # every page owned now: the memfd agrees
        assert bytes(view) == model
        view.release()
    assert disk.durable_image() == model


@pytest.mark.slow
@pytest.mark.timeout(SLOW_SECONDS * 2 + 300)
def test_long_fsx_and_nsstress_with_a_small_cache() -> None:
    """fsx, then nsstress, seed after seed on a block device mounted with cache_size=64K,
    SLOW_SECONDS (DAXFS_SLOW_SECONDS) each half."""
    import time

    from daxfs.testing import fsx, nsstress
    from tests.testing.known_bugs import FSX_WITHOUT, NSSTRESS_WITHOUT

    deadline = time.monotonic() + SLOW_SECONDS / 2
    seed, total = 2000, fsx.FsxStats()
    while time.monotonic() < deadline:
        opts = fsx.FsxOptions(block=True, cache_size="64K")
        for kind in FSX_WITHOUT:
            opts.weights[kind] = 0
        total.add(fsx.run(seed, ops=1000, options=opts))
        seed += 1
    print(f"fsx bounded: seeds 2000..{seed - 1}: {total.summary()}")
    assert total.crashes > 0
    deadline = time.monotonic() + SLOW_SECONDS / 2
    seed = 3000
    while time.monotonic() < deadline:
        o = nsstress.StressOptions(block=True, cache_size="64K")
        o.skip = frozenset(NSSTRESS_WITHOUT)
        assert nsstress.run(seed, ops=600, options=o).checks == 2
        seed += 1


@pytest.mark.parametrize("with_data", [True, False])
def test_invalidate_after_a_direct_write_never_writes_a_stale_page_over_it(
    with_data: bool,
) -> None:
    """A paged page dirty in the page cache (bytes 10..20 of page 1), a direct write of
    512 bytes inside that page done around the cache, then invalidate (as direct I/O
    calls it, with or without the written bytes): the cache shows both writes, and so
    does the disk after a drain (a write-back of the whole stale page would undo the
    direct write)."""
    disk = SimulatedBlockDevice(MIB, image=image())
    model = bytearray(disk.image())
    with BoundedBlockCache(disk, "64K") as cache:
        cache.write(PAGE + 10, b"x" * 10, drain=False)
        model[PAGE + 10 : PAGE + 20] = b"x" * 10
        direct = b"D" * 512
        disk.write(PAGE + 1024, direct)
        model[PAGE + 1024 : PAGE + 1536] = direct
        cache.invalidate(PAGE + 1024, 512, direct if with_data else None)
        assert cache.read(0, 4 * PAGE) == model[: 4 * PAGE]
        cache.drain()
    assert disk.durable_image() == model


def test_threads_buffered_direct_truncate_mmap_on_a_bounded_mount() -> None:
    """Four threads on one mount with cache_size=64K, each on its own file: buffered
    writes and reads (the page cache, evicting), aligned direct writes and reads (bios
    around the cache), truncates that shrink and regrow a file, and stores through a
    mapping with msync. Each checks every byte it reads against its model while the
    others run; at the end, and after a remount without cache_size, every file equals
    its model."""
    import threading

    from daxfs.fs.direct import aligned_buffer

    disk = fresh(64 * MIB)
    size = 256 * 1024
    models: dict[str, bytearray] = {}
    errors: list[BaseException] = []

    def buffered(fs: object, path: str, seed: int) -> None:
        rng = random.Random(seed)
        model = models[path]
        with fs.open(path, "rb+", buffering=0) as f:  # type: ignore[attr-defined]
            for _ in range(60):
                off = rng.randrange(size - 9000)
                data = rng.randbytes(rng.randrange(1, 9000))
                f.pwrite(data, off)
                model[off : off + len(data)] = data
                off = rng.randrange(size - 5000)
                assert f.pread(5000, off) == model[off : off + 5000], path

    def direct(fs: object, path: str, seed: int) -> None:
        rng = random.Random(seed)
        model = models[path]
        buf = aligned_buffer(8 * PAGE)
        with (
            fs.open(path, "rb+", buffering=0, direct=True) as f,  # type: ignore[attr-defined]
            fs.open(path, "rb", buffering=0) as b,  # type: ignore[attr-defined]
        ):
            for _ in range(60):
                n = rng.randrange(1, 9) * 512
                off = rng.randrange((size - n) // 512) * 512
                assert b.pread(n, off) == model[off : off + n]  # cached through the page cache
                data = rng.randbytes(n)
                buf[:n] = data
                f.pwrite(memoryview(buf)[:n], off)
                model[off : off + n] = data
                assert b.pread(n, off) == model[off : off + n], path  # not the cached page
                got = f.preadinto(memoryview(buf)[:n], off)
                assert got == n
                assert buf[:n] == model[off : off + n], path

    def truncating(fs: object, path: str, seed: int) -> None:
        rng = random.Random(seed)
        model = models[path]
        with fs.open(path, "rb+", buffering=0) as f:  # type: ignore[attr-defined]
            for _ in range(40):
                new = rng.randrange(size)
                f.truncate(new)
                del model[new:]
                f.truncate(size)
                model.extend(bytes(size - new))
                off = rng.randrange(size - 3000)
                data = rng.randbytes(3000)
                f.pwrite(data, off)
                model[off : off + 3000] = data
                assert f.pread(size, 0) == model, path

    def mapped(fs: object, path: str, seed: int) -> None:
        rng = random.Random(seed)
        model = models[path]
        with fs.open(path, "rb+", buffering=0) as f:  # type: ignore[attr-defined]
            m = f.mmap(0, size)
            try:
                for _ in range(60):
                    off = rng.randrange(size - 600)
                    data = rng.randbytes(rng.randrange(1, 600))
                    m[off : off + len(data)] = data
                    model[off : off + len(data)] = data
                    m.msync(off, len(data))
                    off = rng.randrange(size - 2000)
                    assert f.pread(2000, off) == model[off : off + 2000], path
            finally:
                m.close()

    workers = {"/buffered": buffered, "/direct": direct, "/trunc": truncating, "/mapped": mapped}
    with mount(disk, cache_size="64K") as fs:
        for i, path in enumerate(workers):
            models[path] = bytearray(random.Random(i).randbytes(size))
            with fs.open(path, "wb") as f:
                f.write(models[path])

        def run(path: str, seed: int) -> None:
            try:
                workers[path](fs, path, seed)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(p, i)) for i, p in enumerate(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert fs.device.files.stats.evictions > 0  # type: ignore[attr-defined]
        for path, model in models.items():
            assert fs.open(path, "rb").read() == model, path
    assert fsck(disk).clean
    with mount(disk) as fs:
        for path, model in models.items():
            assert fs.open(path, "rb").read() == model, path
