"""The filesystem on a block device: BlockCache, dax=, mkfs/mount/fsck, faults, mmap.

BlockCache is a ``daxfs.pmem.Device`` over a ``BlockDevice`` (daxfs/block/cache.py):
it passes the device conformance suite, and its persistence maps onto bios
(flush marks dirty blocks; drain writes them back, then FLUSH, or one FUA
write).  The crash tests of every operation are in
tests/crash/test_block_fs_ops.py; here: the mapping itself, the dax= table of
daxfs/fs/devices.py, the fault loops (EIO and short completions of writes and
flushes: the error reaches the caller, nothing committed is lost), ENOSPC,
DAX mmap of the cache, and one image used through DAX and through bios.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.block import PmemBlockDevice, open_block
from daxfs.block.cache import BlockCache
from daxfs.errors import Busy, InvalidArgument, NoSpace
from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mkfs, mount
from daxfs.pmem import Device
from daxfs.testing import SimulatedPmem
from daxfs.testing.blockfaults import FaultyBlockDevice, check_fs_block_faults
from daxfs.testing.device_tests import DeviceTests
from daxfs.testing.simblock import SimulatedBlockDevice
from tests.block.loop import loop_device, needs_losetup
from tests.crash.test_fs_ops import OPERATIONS

MIB = 1 << 20
SIZE = 16 * MIB


# -- the device mapping ------------------------------------------------------------------


class TestBlockCacheConformance(DeviceTests):
    """BlockCache over the simulated disk passes the suite every Device passes."""

    @pytest.fixture
    def device(self) -> Iterator[Device]:
        dev = BlockCache(SimulatedBlockDevice(256 * 1024), own=True)
        yield dev
        if not dev.closed:
            dev.close()

    def test_size_and_properties(self, device: Device) -> None:
        assert device.size == 256 * 1024
        assert device.persist_method == "bio"
        assert not device.closed


def test_store_reaches_the_disk_only_when_flushed_and_drained() -> None:
    disk = SimulatedBlockDevice(MIB)
    with BlockCache(disk) as cache:
        cache.direct_access(1000, 8)[:] = b"unflush!"
        cache.write(5000, b"flushed", drain=False)
        assert cache.pending() == [(4608, 5120)]
        assert disk.image()[5000:5007] == bytes(7)  # nothing written before the drain
        cache.drain()
        assert cache.pending() == []
        # durable (one run: a FUA write), and the unflushed store never left the cache
        assert disk.durable_image()[5000:5007] == b"flushed"
        assert disk.image()[1000:1008] == bytes(8)
        assert cache.stats["fua"] == 1


def test_drain_of_several_runs_writes_them_then_flushes() -> None:
    disk = SimulatedBlockDevice(MIB)
    with BlockCache(disk) as cache:
        cache.write(0, b"a", drain=False)
        cache.write(100_000, b"b", drain=False)
        cache.fill(4096, 10, 7, drain=False)
        flushes = disk.flush_count
        cache.drain()
        assert disk.flush_count == flushes + 1  # one FLUSH, after the writes
        assert cache.stats["flushes"] == 1
        media = disk.durable_image()
        assert media[0:1] == b"a"
        assert media[100_000:100_001] == b"b"
        assert media[4096:4106] == bytes([7]) * 10
        cache.drain()  # nothing dirty: no I/O
        assert disk.flush_count == flushes + 1


def test_cache_loads_what_the_disk_holds() -> None:
    image = bytes(range(256)) * (MIB // 256)
    with BlockCache(SimulatedBlockDevice(MIB, image=image)) as cache:
        assert cache.read(0, MIB) == image
        assert bytes(cache.direct_access(300, 4)) == image[300:304]


def test_failed_write_back_raises_naming_the_sector_and_keeps_the_ranges() -> None:
    disk = FaultyBlockDevice(SimulatedBlockDevice(MIB))
    with BlockCache(disk) as cache:
        cache.write(8192, b"data", drain=False)
        disk.arm("write", 1)
        with pytest.raises(OSError, match="Input/output error") as info:
            cache.drain()
        assert info.value.errno == errno.EIO
        assert "bytes [8192, 8704)" in str(info.value)
        assert cache.pending() == [(8192, 8704)]  # still dirty: the next drain retries
        cache.drain()
        assert disk.inner.durable_image()[8192:8196] == b"data"  # type: ignore[attr-defined]


def test_failed_flush_raises_and_keeps_the_ranges() -> None:
    disk = FaultyBlockDevice(SimulatedBlockDevice(MIB))
    with BlockCache(disk) as cache:
        cache.write(0, b"x", drain=False)
        cache.write(MIB // 2, b"y", drain=False)
        disk.arm("flush", 1)
        with pytest.raises(OSError, match="flush"):
            cache.drain()
        assert len(cache.pending()) == 2


def test_load_failure_is_eio_and_leaves_nothing_open() -> None:
    disk = FaultyBlockDevice(SimulatedBlockDevice(MIB))
    disk.arm("read", 1)
    with pytest.raises(OSError, match="Input/output error") as info:
        BlockCache(disk)
    assert info.value.errno == errno.EIO
    assert not disk.closed


def test_a_failure_attaching_the_c_engine_is_raised_not_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cache's mapping is closed after the failure; the view made for the C engine
    must not keep it open, or close() raises BufferError over the real error."""
    from daxfs.pmem import cpu

    def failing(*args: object, **kwargs: object) -> object:
        raise OSError(errno.ENOMEM, "planted: no memory for the region")

    monkeypatch.setattr(cpu, "make_region", failing)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="planted") as info:
        BlockCache(SimulatedBlockDevice(MIB))
    assert info.value.errno == errno.ENOMEM
    assert len(os.listdir("/proc/self/fd")) == before  # the memfd closed too


def test_readonly_cache_refuses_writes_and_gives_read_only_views() -> None:
    with BlockCache(SimulatedBlockDevice(MIB), readonly=True) as cache:
        assert cache.direct_access(0, 8).readonly
        with pytest.raises(OSError, match="read-only") as info:
            cache.write(0, b"x")
        assert info.value.errno == errno.EROFS


def test_bad_ranges_are_einval_naming_the_range() -> None:
    with BlockCache(SimulatedBlockDevice(MIB)) as cache:
        for call in (
            lambda: cache.flush(MIB - 1, 2),
            lambda: cache.write(MIB, b"x"),
            lambda: cache.direct_access(MIB - 4, 8),
        ):
            with pytest.raises(InvalidArgument, match="outside the device"):
                call()


# -- dax= and the targets of mkfs, mount and fsck ------------------------------------


def test_mount_a_block_device_object() -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    with mount(disk) as fs:
        assert isinstance(fs.device, BlockCache)
        with fs.open("/f", "wb") as f:
            f.write(b"on a block device")
    assert not disk.closed  # the caller's device is not closed by unmount
    with mount(disk, readonly=True) as fs:
        assert fs.open("/f", "rb").read() == b"on a block device"
    assert fsck(disk).clean


def test_dax_always_on_a_block_device_is_einval_naming_why() -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    with pytest.raises(InvalidArgument) as info:
        mount(disk, dax="always")
    assert "cannot do DAX" in str(info.value)
    assert "simulated-block" in str(info.value)


@pytest.mark.parametrize("dax", ["sometimes", "", None, 1])
def test_bad_dax_is_einval(dax: object) -> None:
    with pytest.raises(InvalidArgument, match="dax must be"):
        mount(SimulatedPmem(SIZE), dax=dax)  # type: ignore[arg-type]


def test_dax_never_on_pmem_goes_through_the_pmem_block_driver() -> None:
    """The same image, written through bios (dax=never), read through DAX, and back."""
    pmem = SimulatedPmem(SIZE)
    mkfs(pmem)
    with mount(pmem, dax="never") as fs:
        assert isinstance(fs.device, BlockCache)
        assert isinstance(fs.device.bdev, PmemBlockDevice)
        fs.makedirs("/a/b")
        with fs.open("/a/b/f", "wb") as f:
            f.write(b"x" * 10000)
    with mount(pmem, dax="always") as fs:
        assert fs.device is pmem
        assert fs.open("/a/b/f", "rb").read() == b"x" * 10000
        fs.rename("/a/b/f", "/g")
    with mount(pmem, dax="never") as fs:
        assert fs.listdir("/") == ["a", "g"] or sorted(fs.listdir("/")) == ["a", "g"]
    assert fsck(pmem).clean


def test_the_same_device_cannot_be_mounted_twice() -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    with mount(disk), pytest.raises(Busy):
        mount(disk)
    pmem = SimulatedPmem(SIZE)
    mkfs(pmem)
    with mount(pmem), pytest.raises(Busy):
        mount(pmem, dax="never")


def test_a_file_through_the_file_backend(tmp_path: Path) -> None:
    """dax=never on a path: the file backend (O_DIRECT where the file system allows)."""
    image = tmp_path / "fs.img"
    mkfs(image, SIZE, dax="never")
    with mount(image, dax="never") as fs:
        assert isinstance(fs.device, BlockCache)
        assert "O_DIRECT" in fs.device.bdev.engine or "buffered" in fs.device.bdev.engine
        with fs.open("/f", "wb") as f:
            f.write(b"y" * 100_000)
    assert fsck(image, dax="never").clean
    # the same bytes through DAX (the file as emulated pmem)
    with mount(image) as fs:
        assert fs.open("/f", "rb").read() == b"y" * 100_000
    with pytest.raises(OSError, match=r"missing\.img") as info:
        mount(tmp_path / "missing.img", dax="never")
    assert info.value.errno == errno.ENOENT
    assert "missing.img" in str(info.value)


def test_two_caches_of_one_file_are_refused_across_opens(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    mkfs(image, SIZE)
    with mount(image, dax="never"):
        with pytest.raises(Busy):
            mount(image, dax="never")
        with open_block(image) as bdev:
            with pytest.raises(Busy):
                mount(bdev)
            assert not bdev.closed  # a device passed in is the caller's to close


# -- the filesystem's behaviour on a block device ------------------------------------


def test_enospc_on_a_full_block_device() -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    with mount(disk) as fs:
        with fs.open("/big", "wb", buffering=0) as f:
            chunk = b"z" * MIB
            with pytest.raises(NoSpace) as info:
                for _ in range(64):
                    f.write(chunk)
            assert info.value.errno == errno.ENOSPC
            written = f.tell()
        fs.unlink("/big")
        assert written > 0
    assert fsck(disk).clean


def test_writable_mmap_maps_the_cache_and_msync_writes_it_back() -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    fs = mount(disk)
    with fs.open("/m", "wb") as f:
        f.truncate(8192)
    with fs.open("/m", "rb+", buffering=0) as f, f.mmap() as m:
        view = memoryview(m)
        view[100:105] = b"hello"
        view[5000:5005] = b"later"
        m.msync(0, 4096)
        view.release()
        # a power failure now: the msync'ed page is on the disk, the other not yet
        crashed = disk.crash(0)
        with mount(crashed, readonly=True) as seen, seen.open("/m", "rb") as g:
            data = g.read()
        assert data[100:105] == b"hello"
        assert data[5000:5005] == bytes(5)
    fs.unmount()  # fsync-at-unmount writes back every range a mapping covered
    with mount(disk) as fs2, fs2.open("/m", "rb") as g:
        data = g.read()
    assert data[5000:5005] == b"later"


@pytest.mark.parametrize(
    "name",
    ["create", "overwrite small", "write extending", "rename file", "setxattr long value first"],
)
@pytest.mark.parametrize("kind", ["write", "flush"])
def test_faults_reach_the_caller_and_lose_nothing_committed(name: str, kind: str) -> None:
    setup, op = OPERATIONS[name]
    report = check_fs_block_faults(setup, op, kind)
    assert report.points >= 1
    assert report.raised >= 1  # some fault reached the caller as an OSError


@pytest.mark.parametrize("name", ["overwrite across blocks", "unlink fragmented"])
def test_short_writes_reach_the_caller_and_lose_nothing_committed(name: str) -> None:
    setup, op = OPERATIONS[name]
    report = check_fs_block_faults(setup, op, "write", short=True)
    assert report.points >= 1
    assert report.raised >= 1


def test_persistent_write_fault_turns_errors_not_corruption() -> None:
    setup, op = OPERATIONS["mkdir"]
    report = check_fs_block_faults(setup, op, "write", persistent=True)
    assert report.points >= 1


def test_fault_harness_catches_a_cache_that_swallows_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The planted bug: a drain that ignores a failed write-back (the commit reports
    success with its log missing on the disk)."""
    real = BlockCache._write_back

    def swallowing(self: BlockCache, runs: list[tuple[int, int]]) -> None:
        with contextlib.suppress(OSError):
            real(self, runs)

    monkeypatch.setattr(BlockCache, "_write_back", swallowing)
    setup, op = OPERATIONS["create"]
    with pytest.raises(AssertionError):
        check_fs_block_faults(setup, op, "write")


def test_fsx_on_a_block_backed_mount() -> None:
    """The model-based random workload of daxfs.testing.fsx on a block device."""
    from daxfs.testing.fsx import FsxOptions, run

    stats = run(seed=7, ops=400, options=FsxOptions(block=True))
    assert stats.ops == 400
    assert stats.remounts >= 3
    assert stats.crashes >= 1  # power failures inside operations, on the block device
    assert stats.powercuts >= 1
    assert stats.by_kind.get("mapwrite", 0) >= 1  # stores through a mapping of the cache


@needs_losetup
def test_a_block_special_file_goes_through_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A loop device path: mkfs, mount and fsck pick the block layer; dax=always is EINVAL;
    ``daxfs info`` reports it (superblock read by bios, mounted state by flock)."""
    from daxfs.cli import main

    image = tmp_path / "loop.img"
    image.write_bytes(bytes(SIZE))
    with loop_device(image) as loop:
        mkfs(loop)
        with mount(loop) as fs:
            assert isinstance(fs.device, BlockCache)
            with fs.open("/f", "wb") as f:
                f.write(b"on a loop device")
        with pytest.raises(InvalidArgument, match="cannot do DAX"):
            mount(loop, dax="always")
        assert fsck(loop).clean
        capsys.readouterr()
        assert main(["info", loop]) == 0
        out = capsys.readouterr().out
        assert "backend:           block device" in out
        assert "state:             clean" in out
        with mount(loop):
            assert main(["info", loop]) == 0
            assert "state:             mounted" in capsys.readouterr().out
    with mount(image) as fs:  # the backing file, through DAX: the same bytes
        assert fs.open("/f", "rb").read() == b"on a loop device"


def test_an_abandoned_cache_releases_its_memfd() -> None:
    """Crash tests drop mounts whose power failed without closing them: no fd leaks."""
    import gc

    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        BlockCache(SimulatedBlockDevice(MIB)).write(0, b"x", drain=False)
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_a_device_larger_than_the_memory_limit_is_enomem_at_mount() -> None:
    with pytest.raises(OSError, match="more than the 524288 bytes of memory") as info:
        BlockCache(SimulatedBlockDevice(MIB), memory_limit=MIB // 2)
    assert info.value.errno == errno.ENOMEM
    assert info.value.filename == "simulated-block"
    from daxfs.block.cache import memory_available

    available = memory_available()
    assert available is not None
    assert available > 0


def test_a_load_failing_with_reads_in_flight_raises_the_read_error(tmp_path: Path) -> None:
    """The file backend completes reads on its engine's threads: when one fails, the
    others still in flight are waited for (their views of the cache released) and
    the error raised is the read's, not a BufferError."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(32 * MIB))
    disk = FaultyBlockDevice(open_block(image))
    try:
        disk.arm("read", 2)
        with pytest.raises(OSError, match="Input/output error") as info:
            BlockCache(disk)
        assert info.value.errno == errno.EIO
    finally:
        disk.close()


def test_discard_gives_the_memory_back_while_views_are_alive() -> None:
    """A mount abandoned after a power failure: its views live on until the cyclic GC,
    but the cache's pages are freed at once and every method says closed."""

    def shmem_kib() -> int:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssShmem:"):
                    return int(line.split()[1])
        raise AssertionError("no RssShmem")

    cache = BlockCache(SimulatedBlockDevice(16 * MIB))
    view = cache.direct_access(0, 16 * MIB)
    view[:] = b"\x01" * (16 * MIB)  # every page of the cache in memory
    cache.flush(0, 4096)
    before = shmem_kib()
    cache.discard()
    assert before - shmem_kib() >= 15 * 1024  # the 16 MiB are gone while the view lives
    assert view[4096] == 0  # a view reads zeros, never faults
    assert cache.closed
    assert cache.pending() == []
    with pytest.raises(ValueError, match="closed"):
        cache.read(0, 1)
    view.release()
    cache.close()
