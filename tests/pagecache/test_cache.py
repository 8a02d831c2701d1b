"""daxfs.pagecache: the bounded page cache over a block device's direct I/O.

Every test checks bytes against a model (a bytearray of what the object holds)
and the device's own image, so a stale or lost page shows as a wrong byte.
"""

from __future__ import annotations

import errno
import random
import threading

import pytest

from daxfs.errors import InvalidArgument, ReadOnly
from daxfs.pagecache import (
    MIN_LIMIT,
    PAGE_SIZE,
    RA_MAX,
    RA_MIN,
    AddressSpace,
    BlockBacking,
    PageCache,
    parse_size,
)
from daxfs.testing.blockfaults import FaultyBlockDevice
from daxfs.testing.simblock import SimulatedBlockDevice

SIZE = 4 << 20
LIMIT = 1 << 20  # a quarter of the device, so eviction happens


def pattern(size: int, seed: int = 1) -> bytearray:
    return bytearray(random.Random(seed).randbytes(size))


@pytest.fixture
def dev() -> SimulatedBlockDevice:
    return SimulatedBlockDevice(SIZE, image=pattern(SIZE))


def space_of(bdev: object, limit: int = LIMIT) -> AddressSpace:
    return PageCache(limit).space(BlockBacking(bdev))  # type: ignore[arg-type]


def test_parse_size() -> None:
    assert parse_size("64M") == 64 << 20
    assert parse_size("1G") == 1 << 30
    assert parse_size("64MiB") == 64 << 20
    assert parse_size("4096") == 4096
    assert parse_size(8192) == 8192
    for bad in ("", "64X", "-1", "0", "1.5G", True):
        with pytest.raises(InvalidArgument) as info:
            parse_size(bad)  # type: ignore[arg-type]
        assert info.value.errno == errno.EINVAL
        assert "cache_size" in str(info.value)


def test_limits_checked() -> None:
    with pytest.raises(InvalidArgument, match="below the minimum"):
        PageCache(MIN_LIMIT - 1)
    with pytest.raises(OSError, match="more than the 2097152 bytes of memory available") as info:
        PageCache(4 << 20, memory_limit=2 << 20)
    assert info.value.errno == errno.ENOMEM


def test_read_matches_device_and_is_bounded(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    model = dev.image()
    rng = random.Random(2)
    for _ in range(300):
        off = rng.randrange(SIZE)
        n = rng.randrange(1, 3 * PAGE_SIZE)
        assert space.read(off, n) == model[off : off + n]
        assert space.pool.resident <= LIMIT
    assert space.pool.stats.evictions > 0
    assert space.pool.stats.peak * PAGE_SIZE <= LIMIT
    assert space.read(SIZE - 10, 100) == model[-10:]  # short at the end
    assert space.read(SIZE + 10, 100) == b""


def test_reread_hits_without_io(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    space.read(0, PAGE_SIZE)
    bios = dev.statistics()
    hits = space.pool.stats.hits
    for _ in range(10):
        assert space.read(100, 200) == dev.image()[100:300]
    assert dev.statistics() == bios
    assert space.pool.stats.hits == hits + 10


def test_lru_keeps_recent_pages(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    hot = 3 * PAGE_SIZE
    nslots = LIMIT // PAGE_SIZE
    # stream through twice the cache, touching the hot page after each miss run
    for i in range(2 * nslots):
        space.read(hot, 1)
        space.read((10 + i * 7) * PAGE_SIZE % SIZE, 1)
    assert space.cached(hot, 1) == PAGE_SIZE


def test_sequential_readahead_grows_and_random_does_not(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    for i in range(200):
        space.read(i * PAGE_SIZE, PAGE_SIZE)
    st = space.pool.stats
    assert st.misses < 200 // 4  # the readahead read the rest
    assert st.hits + st.misses == 200
    assert st.read_calls <= 200 // RA_MIN
    windows_full = st.read_calls
    cold = space_of(SimulatedBlockDevice(SIZE))
    rng = random.Random(3)
    pages = rng.sample(range(SIZE // PAGE_SIZE), 50)
    for p in pages:
        cold.read(p * PAGE_SIZE, 1)
    # a random read reads at most the first window, never the grown one
    assert cold.pool.stats.readahead <= 50 * (RA_MIN - 1)
    assert windows_full < 50
    assert RA_MAX * PAGE_SIZE <= LIMIT


def test_write_back_and_sync(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    model = dev.image()
    data = pattern(3 * PAGE_SIZE + 100, seed=5)
    off = 5 * PAGE_SIZE - 50  # partial pages at both ends
    assert space.write(off, data) == len(data)
    model = model[:off] + bytes(data) + model[off + len(data) :]
    assert space.read(0, SIZE) == model  # the cache shows it (and evicts, writing back)
    space.sync()
    assert space.pool.dirty == 0
    assert dev.durable_image() == model  # FLUSH: durable


def test_sync_write_is_durable_on_return(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    space.write(12345, b"durable", sync=True)
    assert dev.durable_image()[12345:12352] == b"durable"
    flushes = dev.flush_count
    space.sync()  # nothing dirty: no write, one more FLUSH
    assert dev.flush_count == flushes + 1


def test_unsynced_write_is_not_on_the_device(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    before = dev.image()
    space.write(0, b"x" * 100)
    assert dev.image() == before
    assert space.read(0, 100) == b"x" * 100


def test_dirty_pages_written_back_when_evicted() -> None:
    dev = SimulatedBlockDevice(SIZE)
    space = space_of(dev)
    model = bytearray(SIZE)
    rng = random.Random(7)
    for _ in range(400):  # writes of twice the cache: eviction must write back
        off = rng.randrange(SIZE - 3 * PAGE_SIZE)
        data = rng.randbytes(rng.randrange(1, 3 * PAGE_SIZE))
        assert space.write(off, data) == len(data)
        model[off : off + len(data)] = data
        assert space.pool.resident <= LIMIT
    assert space.pool.stats.writeback > 0
    assert space.read(0, SIZE) == model
    space.sync()
    assert dev.durable_image() == model


def test_write_larger_than_cache() -> None:
    dev = SimulatedBlockDevice(SIZE)
    space = space_of(dev)
    data = pattern(SIZE - 1000, seed=9)
    assert space.write(500, data) == len(data)
    space.sync()
    assert dev.durable_image() == bytes(500) + bytes(data) + bytes(500)


def test_invalidate_then_direct_write(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    space.write(PAGE_SIZE + 10, b"buffered")  # dirty, in a page the direct write covers part of
    space.read(0, 4 * PAGE_SIZE)
    assert space.invalidate(PAGE_SIZE, 2 * PAGE_SIZE) == 2
    assert space.cached(PAGE_SIZE, 2 * PAGE_SIZE) == 0
    assert dev.image()[PAGE_SIZE + 10 : PAGE_SIZE + 18] == b"buffered"  # written back first
    dev.write(2 * PAGE_SIZE, b"d" * PAGE_SIZE)  # the direct write
    assert space.read(2 * PAGE_SIZE, PAGE_SIZE) == b"d" * PAGE_SIZE
    assert space.read(PAGE_SIZE + 10, 8) == b"buffered"


def test_write_back_before_direct_read(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    space.write(7, b"dirty")
    assert space.write_back(0, PAGE_SIZE) == 1
    assert dev.read(0, 512)[7:12] == b"dirty"
    assert space.write_back(0, PAGE_SIZE) == 0


def test_truncate_drops_and_zeroes(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    space.write(0, b"a" * (3 * PAGE_SIZE))
    space.truncate(PAGE_SIZE + 100)
    assert space.cached() == 2 * PAGE_SIZE
    tail = space.read(PAGE_SIZE, PAGE_SIZE)
    assert tail[:100] == b"a" * 100
    assert tail[100:] == bytes(PAGE_SIZE - 100)


def test_read_error_reaches_reader_and_caches_nothing() -> None:
    faulty = FaultyBlockDevice(SimulatedBlockDevice(SIZE, image=pattern(SIZE)))
    space = space_of(faulty)
    faulty.arm("read", 1)
    with pytest.raises(OSError, match="through the page cache") as info:
        space.read(8 * PAGE_SIZE, 10)
    assert info.value.errno == errno.EIO
    assert space.cached() == 0
    assert space.pool.resident == 0
    assert space.read(8 * PAGE_SIZE, 10) == faulty.inner.image()[8 * PAGE_SIZE : 8 * PAGE_SIZE + 10]


def test_short_read_is_an_error() -> None:
    faulty = FaultyBlockDevice(SimulatedBlockDevice(SIZE, image=pattern(SIZE)))
    space = space_of(faulty)
    faulty.arm("read", 1, short=True)
    with pytest.raises(OSError, match="reading bytes"):
        space.read(0, 2 * PAGE_SIZE)
    assert space.cached() == 0


def test_writeback_error_keeps_pages_dirty() -> None:
    inner = SimulatedBlockDevice(SIZE)
    faulty = FaultyBlockDevice(inner)
    space = space_of(faulty)
    space.write(3 * PAGE_SIZE, b"keep me")
    faulty.arm("write", 1)
    with pytest.raises(OSError, match="writing back bytes") as info:
        space.sync()
    assert info.value.errno == errno.EIO
    assert space.pool.dirty == PAGE_SIZE
    assert space.read(3 * PAGE_SIZE, 7) == b"keep me"
    space.sync()  # the retry writes it
    assert inner.durable_image()[3 * PAGE_SIZE : 3 * PAGE_SIZE + 7] == b"keep me"


def test_eviction_writeback_error_fails_the_write_and_loses_nothing() -> None:
    inner = SimulatedBlockDevice(SIZE)
    faulty = FaultyBlockDevice(inner)
    space = space_of(faulty)
    nslots = LIMIT // PAGE_SIZE
    space.write(0, b"\1" * LIMIT)  # every slot dirty
    faulty.arm("write", 1, persistent=True)
    with pytest.raises(OSError, match="writing back bytes"):
        space.write(LIMIT, b"\2" * PAGE_SIZE)
    assert space.pool.dirty == LIMIT  # nothing dropped
    assert len(space.folios) == nslots
    faulty.disarm()
    space.write(LIMIT, b"\2" * PAGE_SIZE)
    space.sync()
    assert inner.durable_image()[: LIMIT + PAGE_SIZE] == b"\1" * LIMIT + b"\2" * PAGE_SIZE


def test_flush_error_named() -> None:
    faulty = FaultyBlockDevice(SimulatedBlockDevice(SIZE))
    space = space_of(faulty)
    faulty.arm("flush", 1)
    with pytest.raises(OSError, match="flushing") as info:
        space.sync()
    assert info.value.errno == errno.EIO


def test_readonly_and_bad_ranges(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    with pytest.raises(InvalidArgument):
        space.read(-1, 10)
    with pytest.raises(InvalidArgument):
        space.write(-1, b"x")
    ro = PageCache(LIMIT).space(BlockBacking(SimulatedBlockDevice(SIZE)))
    ro.backing.bdev.readonly = True  # type: ignore[attr-defined]
    with pytest.raises(ReadOnly):
        ro.write(0, b"x")


def test_closed_pool(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    space.read(0, 10)
    space.pool.close()
    with pytest.raises(ValueError, match="closed"):
        space.read(0, 10)


def test_two_spaces_share_the_bound() -> None:
    pool = PageCache(LIMIT)
    a_dev = SimulatedBlockDevice(SIZE, image=pattern(SIZE, 1))
    b_dev = SimulatedBlockDevice(SIZE, image=pattern(SIZE, 2))
    a, b = pool.space(BlockBacking(a_dev)), pool.space(BlockBacking(b_dev))
    assert a.read(0, SIZE) == a_dev.image()
    assert b.read(0, SIZE) == b_dev.image()
    assert pool.resident <= LIMIT
    assert len(a.folios) + len(b.folios) == pool.resident // PAGE_SIZE


def test_threads_check_every_byte() -> None:
    """Writers own disjoint stripes, readers read everything: every byte read is
    one some writer wrote there (or the initial image), never a stale page."""
    dev = SimulatedBlockDevice(SIZE, image=bytes(SIZE))
    space = space_of(dev)
    stripes = 4
    stripe = SIZE // stripes
    versions = [0] * stripes
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            rng = random.Random(k)
            for v in range(1, 40):
                off = k * stripe + rng.randrange(0, stripe - 2 * PAGE_SIZE, 8)
                space.write(k * stripe, bytes([v]) * 8)  # the stripe's version marker
                space.write(off, bytes([v]) * PAGE_SIZE)
                versions[k] = v
                if v % 10 == 0:
                    space.sync(k * stripe, stripe)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(30):
                for k in range(stripes):
                    seen = versions[k]
                    head = space.read(k * stripe, 8)
                    assert len(set(head)) == 1
                    assert head[0] >= seen
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(stripes)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    final = space.read(0, SIZE)
    space.sync()
    assert dev.durable_image() == final
    for k in range(stripes):
        assert final[k * stripe : k * stripe + 8] == bytes([39]) * 8


def test_model_random_ops() -> None:
    """A random mix against a bytearray model; then durable == model after sync."""
    dev = SimulatedBlockDevice(SIZE, image=pattern(SIZE, 4))
    space = space_of(dev)
    model = bytearray(dev.image())
    rng = random.Random(11)
    for step in range(600):
        op = rng.random()
        off = rng.randrange(SIZE)
        n = rng.randrange(1, 4 * PAGE_SIZE)
        if op < 0.4:
            assert space.read(off, n) == model[off : off + n], step
        elif op < 0.8:
            data = rng.randbytes(n)
            done = space.write(off, data)
            assert done == min(n, SIZE - off)
            model[off : off + done] = data[:done]
        elif op < 0.9:
            space.invalidate(off, n)
            dev.write(off - off % 512, model[off - off % 512 : off - off % 512 + 512])
        else:
            space.sync(off, n)
        assert space.pool.resident <= LIMIT
    space.sync()
    assert dev.durable_image() == model


def test_forget_after_a_direct_write_keeps_dirty_bytes_outside_it(
    dev: SimulatedBlockDevice,
) -> None:
    """A direct write of [P+100, 3P+50) done around the cache: pages wholly inside are
    dropped, a clean partial page is dropped, a dirty partial page keeps its own bytes
    outside the range and takes the written ones inside; nothing stale is written back."""
    space = space_of(dev)
    model = bytearray(dev.image())
    space.read(0, 4 * PAGE_SIZE)  # pages 0..3 cached, clean
    space.write(PAGE_SIZE + 10, b"D" * 20)  # page 1 dirty, outside the range
    space.write(2 * PAGE_SIZE, b"S" * 8)  # page 2 dirty, wholly inside: superseded
    model[PAGE_SIZE + 10 : PAGE_SIZE + 30] = b"D" * 20
    start, end = PAGE_SIZE + 100, 3 * PAGE_SIZE + 50
    written = bytes(random.Random(12).randbytes(end - start))
    dev.write(start - 100, bytes(model[start - 100 : start]) + written[: PAGE_SIZE - 100])
    dev.write(2 * PAGE_SIZE, written[PAGE_SIZE - 100 : 2 * PAGE_SIZE - 100])
    dev.write(3 * PAGE_SIZE, written[2 * PAGE_SIZE - 100 :] + bytes(model[end : end + 462]))
    model[start:end] = written
    assert space.forget(start, end - start, written) == 2  # page 2 (inside), page 3 (clean)
    assert space.cached(PAGE_SIZE, PAGE_SIZE) == PAGE_SIZE  # page 1 kept, dirty
    assert space.read(0, 5 * PAGE_SIZE) == model[: 5 * PAGE_SIZE]
    space.sync()
    assert dev.durable_image()[: 5 * PAGE_SIZE] == model[: 5 * PAGE_SIZE]


def test_forget_without_data_reads_back(dev: SimulatedBlockDevice) -> None:
    space = space_of(dev)
    space.write(10, b"mine")  # page 0 dirty
    dev.write(512, b"W" * 512)  # the direct write, inside page 0
    space.forget(512, 512)
    got = space.read(0, 1024)
    assert got[10:14] == b"mine"
    assert got[512:1024] == b"W" * 512
    with pytest.raises(InvalidArgument):
        space.forget(0, 10, b"short")
