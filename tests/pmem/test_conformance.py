"""Every device backend available here passes the same DeviceTests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.pmem import Device, Granularity, cpu, open_device
from daxfs.testing import SimulatedPmem
from daxfs.testing.device_tests import DeviceTests

SIZE = 256 * 1024


def _close(device: Device) -> None:
    if not device.closed:
        device.close()


class TestExt4File(DeviceTests):
    """A file on the host's disk filesystem (ext4 here): msync path."""

    @pytest.fixture
    def device(self, tmp_path: Path) -> Iterator[Device]:
        dev = open_device(tmp_path / "pmem.img", SIZE, create=True)
        assert dev.granularity is Granularity.PAGE
        assert dev.persist_method == "msync"
        yield dev
        _close(dev)


class TestShmMsync(DeviceTests):
    """A file on /dev/shm, persisted with msync (the safe default)."""

    @pytest.fixture
    def device(self, shm_path: Path) -> Iterator[Device]:
        dev = open_device(shm_path, SIZE, create=True)
        assert dev.persist_method == "msync"
        yield dev
        _close(dev)


class TestShmCpu(DeviceTests):
    """A file on /dev/shm with persist="cpu": CPU cache flushes and fences."""

    @pytest.fixture
    def device(self, shm_path: Path) -> Iterator[Device]:
        if not cpu.native_available() or cpu.flush_instruction()[0] is None:
            pytest.skip("no CPU flush instruction here")
        dev = open_device(shm_path, SIZE, create=True, persist="cpu")
        assert dev.granularity is Granularity.CACHE_LINE
        assert dev.persist_method == "cpu"
        yield dev
        _close(dev)


@pytest.mark.parametrize("instruction", ["clflushopt", "clflush"])
class TestShmWeakerFlush(DeviceTests):
    """The same with each weaker flush instruction, forced by DAXFS_FLUSH."""

    @pytest.fixture
    def device(
        self, shm_path: Path, instruction: str, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[Device]:
        if not cpu.cpu_features().get(instruction):
            pytest.skip(f"no {instruction} on this CPU")
        monkeypatch.setenv("DAXFS_FLUSH", instruction)
        dev = open_device(shm_path, SIZE, create=True, persist="cpu")
        assert dev.detection.region_mode == instruction
        yield dev
        _close(dev)


class TestNoNativeExtension(DeviceTests):
    """Without the C extension: pure-Python msync fallback."""

    @pytest.fixture
    def device(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Device]:
        monkeypatch.setattr(cpu, "_native", None)
        monkeypatch.setattr(cpu, "NATIVE_ERROR", "disabled by test")
        dev = open_device(tmp_path / "pmem.img", SIZE, create=True)
        assert isinstance(dev._region, cpu.FallbackRegion)
        yield dev
        _close(dev)


class TestSimulatedPmem(DeviceTests):
    @pytest.fixture
    def device(self) -> Iterator[Device]:
        dev = SimulatedPmem(SIZE)
        yield dev
        _close(dev)
