"""Every block device backend passes the same BlockDeviceTests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.block import BlockDevice, PmemBlockDevice, QueueLimits, open_block
from daxfs.pmem import cpu, open_device
from daxfs.testing import SimulatedPmem
from daxfs.testing.block_tests import BlockDeviceTests
from daxfs.testing.blockfaults import FaultyBlockDevice
from daxfs.testing.simblock import SimulatedBlockDevice

SIZE = 2 << 20


def _close(dev: BlockDevice) -> None:
    if not dev.closed:
        dev.close()


class TestPmemOverSimulated(BlockDeviceTests):
    @pytest.fixture
    def block_device(self) -> Iterator[BlockDevice]:
        dev = PmemBlockDevice(SimulatedPmem(SIZE), own=True)
        assert not dev.write_cache
        yield dev
        _close(dev)


class TestPmemOverShm(BlockDeviceTests):
    """A PmemDevice on /dev/shm with CPU flushes (or msync without the extension)."""

    @pytest.fixture
    def block_device(self, shm_path: Path) -> Iterator[BlockDevice]:
        persist = "cpu" if cpu.native_available() and cpu.flush_instruction()[0] else "msync"
        dev = PmemBlockDevice(open_device(shm_path, SIZE, create=True, persist=persist), own=True)
        yield dev
        _close(dev)


class TestFileOnDisk(BlockDeviceTests):
    """An image on the host's disk file system (ext4 here): O_DIRECT."""

    @pytest.fixture
    def block_device(self, tmp_path: Path) -> Iterator[BlockDevice]:
        dev = open_block(tmp_path / "disk.img", SIZE, create=True)
        assert dev.direct, dev.engine_reason
        assert "O_DIRECT" in dev.engine
        yield dev
        _close(dev)


class TestFileOnShm(BlockDeviceTests):
    @pytest.fixture
    def block_device(self, shm_path: Path) -> Iterator[BlockDevice]:
        dev = open_block(shm_path, SIZE, create=True, queue_depth=4)
        yield dev
        _close(dev)


class TestFileBuffered(BlockDeviceTests):
    """direct=False: the fallback path, through the page cache."""

    @pytest.fixture
    def block_device(self, tmp_path: Path) -> Iterator[BlockDevice]:
        dev = open_block(tmp_path / "disk.img", SIZE, create=True, direct=False)
        assert not dev.direct
        assert "buffered" in dev.engine
        assert "direct=False" in dev.engine_reason
        yield dev
        _close(dev)


class TestSimulated(BlockDeviceTests):
    @pytest.fixture
    def block_device(self) -> Iterator[BlockDevice]:
        dev = SimulatedBlockDevice(SIZE)
        yield dev
        _close(dev)


class TestSimulatedSmallLimits(BlockDeviceTests):
    """Limits small enough that the random bios are split and merges are bounded
    (4 segments: the random test cuts a bio in at most 4 pieces, so every logical block
    fits in one request)."""

    @pytest.fixture
    def block_device(self) -> Iterator[BlockDevice]:
        limits = QueueLimits(
            max_segments=4,
            max_segment_bytes=700,
            max_bytes=2048,
            max_discard_bytes=1024,
            max_write_zeroes_bytes=1536,
        )
        dev = SimulatedBlockDevice(SIZE, limits=limits)
        yield dev
        _close(dev)


class TestSimulatedWithoutFua(BlockDeviceTests):
    """FUA emulated by the block layer: the write, then a FLUSH."""

    @pytest.fixture
    def block_device(self) -> Iterator[BlockDevice]:
        dev = SimulatedBlockDevice(SIZE)
        dev.fua = False
        yield dev
        _close(dev)


class TestFaultyUnarmed(BlockDeviceTests):
    """The fault wrapper passes everything through while nothing is armed."""

    @pytest.fixture
    def block_device(self, tmp_path: Path) -> Iterator[BlockDevice]:
        dev = FaultyBlockDevice(open_block(tmp_path / "disk.img", SIZE, create=True))
        yield dev
        _close(dev)
