"""open_device: backend selection (real and faked kernel answers) and bad input."""

from __future__ import annotations

import errno
import mmap
import os
import stat
from pathlib import Path

import pytest

from daxfs.errors import InvalidArgument, NotSupported
from daxfs.pmem import Backend, Granularity, Platform, cpu, open_device
from daxfs.pmem.platform import MAP_SHARED_VALIDATE, MAP_SYNC

needs_flush = pytest.mark.skipif(
    cpu.flush_instruction()[0] is None, reason="no CPU cache flush instruction"
)


# -- real kernel -----------------------------------------------------------------


def test_regular_file_is_emulated_pmem_with_msync(tmp_path: Path) -> None:
    with open_device(tmp_path / "a.img", 8192, create=True) as dev:
        assert dev.backend is Backend.FILE
        assert dev.granularity is Granularity.PAGE
        assert dev.persist_method == "msync"
        assert dev.flush_instruction is None
        assert dev.detection.power_fail_safe
        assert "MAP_SYNC" in dev.detection.reasons["backend"]


@needs_flush
def test_persist_cpu_forces_cache_line(shm_path: Path) -> None:
    with open_device(shm_path, 8192, create=True, persist="cpu") as dev:
        assert dev.granularity is Granularity.CACHE_LINE
        assert dev.persist_method == "cpu"
        assert dev.flush_instruction == cpu.flush_instruction()[0]
        assert not dev.detection.power_fail_safe
        assert "NOT power-fail safe" in dev.detection.reasons["persist"]


def test_create_grows_and_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "b.img"
    with open_device(path, 4096, create=True) as dev:
        dev.write(10, b"kept")
    with open_device(path, 16384, create=True) as dev:
        assert dev.size == 16384
        assert dev.read(10, 4) == b"kept"
    assert path.stat().st_size == 16384
    with open_device(path) as dev:
        assert dev.size == 16384


def test_size_smaller_than_file_maps_a_prefix(tmp_path: Path) -> None:
    path = tmp_path / "c.img"
    path.write_bytes(bytes(8192))
    with open_device(path, 4096) as dev:
        assert dev.size == 4096
        with pytest.raises(InvalidArgument):
            dev.read(4096, 1)


def test_readonly_device(tmp_path: Path) -> None:
    path = tmp_path / "ro.img"
    path.write_bytes(b"r" * 4096)
    with open_device(path, readonly=True) as dev:
        assert dev.read(0, 2) == b"rr"
        assert dev.direct_access(0, 4).readonly
        with pytest.raises(OSError, match="read-only") as info:
            dev.write(0, b"x")
        assert info.value.errno == errno.EROFS
    assert path.read_bytes()[:1] == b"r"


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        open_device(tmp_path / "nope")


def test_create_needs_size(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="size is required"):
        open_device(tmp_path / "new", create=True)
    assert not (tmp_path / "new").exists()


def test_file_smaller_than_asked(tmp_path: Path) -> None:
    path = tmp_path / "small"
    path.write_bytes(bytes(4096))
    with pytest.raises(InvalidArgument, match="4096 bytes, fewer than the 8192") as info:
        open_device(path, 8192)
    assert info.value.errno == errno.EINVAL
    assert path.stat().st_size == 4096


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.touch()
    with pytest.raises(InvalidArgument, match="empty"):
        open_device(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        open_device(tmp_path)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="FIFO") as info:
        open_device(fifo)
    assert info.value.errno == errno.ENODEV


def test_non_dax_character_device() -> None:
    with pytest.raises(OSError, match="not device-DAX") as info:
        open_device("/dev/null")
    assert info.value.errno == errno.ENODEV


def test_unreadable_path(tmp_path: Path) -> None:
    path = tmp_path / "locked"
    path.write_bytes(bytes(4096))
    path.chmod(0)
    if os.access(path, os.R_OK):  # root ignores the mode: fake the kernel's answer

        class Denying(Platform):
            def open(self, path: str, flags: int, mode: int = 0o666) -> int:
                raise PermissionError(errno.EACCES, "Permission denied", path)

        platform: Platform = Denying()
    else:
        platform = Platform()
    with pytest.raises(PermissionError):
        open_device(path, platform=platform)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": -1}, "negative"),
        ({"size": 0}, "positive"),
        ({"size": 1.5}, "integer"),
        ({"size": "1G"}, "integer"),
        ({"persist": "sometimes"}, "persist"),
        ({"persist": None}, "persist"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        open_device(tmp_path / "x", create=True, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_no_fd_leak_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "small"
    path.write_bytes(bytes(4096))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(InvalidArgument):
            open_device(path, 8192)
    assert len(os.listdir("/proc/self/fd")) == before


# -- faked kernel: device-DAX and MAP_SYNC ----------------------------------------


class FakePlatform(Platform):
    """Answers as a kernel with pmem would; maps real anonymous or file memory."""

    def __init__(
        self,
        *,
        devdax_size: int | None = None,
        map_sync: bool = False,
        domain: str | None = "memory_controller",
    ) -> None:
        self.devdax_size_value = devdax_size
        self.map_sync = map_sync
        self.domain = domain
        self.mmap_calls: list[tuple[int, int]] = []

    def stat(self, path: str) -> os.stat_result:
        if self.devdax_size_value is not None:
            return os.stat_result(
                (stat.S_IFCHR | 0o600, 1, 5, 1, 0, 0, 0, 0, 0, 0), {"st_rdev": os.makedev(251, 3)}
            )
        return super().stat(path)

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        if self.devdax_size_value is not None:
            return os.open("/dev/null", os.O_RDWR)
        return super().open(path, flags, mode)

    def fstat(self, fd: int) -> os.stat_result:
        if self.devdax_size_value is not None:
            return self.stat("/dev/dax0.0")
        return super().fstat(fd)

    def realpath(self, path: str) -> str:
        if path == "/sys/dev/char/251:3/subsystem":
            return "/sys/class/dax"
        if path.endswith("/device") or path.startswith("/sys/dev/block/"):
            return "/sys/devices/platform/e820_pmem/ndbus0/region0/dax0.0"
        return path

    def read_sysfs(self, path: str) -> str | None:
        if path == "/sys/dev/char/251:3/size":
            return str(self.devdax_size_value)
        if path == "/sys/bus/nd/devices/region0/persistence_domain":
            return self.domain
        return None

    def mmap(self, fd: int, length: int, flags: int, prot: int) -> mmap.mmap:
        self.mmap_calls.append((flags, length))
        if self.devdax_size_value is not None:
            return mmap.mmap(-1, length, flags=mmap.MAP_SHARED, prot=prot)
        if flags & MAP_SYNC:
            if not self.map_sync:
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
            flags = mmap.MAP_SHARED
        return mmap.mmap(fd, length, flags=flags, prot=prot)


@needs_flush
def test_devdax_selected_from_sysfs() -> None:
    fake = FakePlatform(devdax_size=2 << 20)
    with open_device("/dev/dax0.0", platform=fake) as dev:
        assert dev.backend is Backend.DEVDAX
        assert dev.size == 2 << 20
        assert dev.granularity is Granularity.CACHE_LINE
        assert dev.persist_method == "cpu"
        assert dev.flush_instruction is not None
        assert dev.detection.power_fail_safe
        assert fake.mmap_calls == [(mmap.MAP_SHARED, 2 << 20)]
        dev.write(0, b"devdax")
        assert dev.read(0, 6) == b"devdax"


@needs_flush
def test_devdax_eadr_is_byte_granular() -> None:
    fake = FakePlatform(devdax_size=2 << 20, domain="cpu_cache")
    with open_device("/dev/dax0.0", platform=fake) as dev:
        assert dev.granularity is Granularity.BYTE
        assert dev.detection.region_mode == "none"
        assert "eADR" in dev.detection.reasons["granularity"]
        dev.persist(0, 64)


def test_devdax_refuses_msync() -> None:
    with pytest.raises(InvalidArgument, match="device-DAX"):
        open_device("/dev/dax0.0", persist="msync", platform=FakePlatform(devdax_size=2 << 20))


def test_devdax_smaller_size_is_a_prefix() -> None:
    with open_device("/dev/dax0.0", 1 << 20, platform=FakePlatform(devdax_size=2 << 20)) as dev:
        assert dev.size == 1 << 20
        with pytest.raises(InvalidArgument):
            dev.persist(1 << 20, 1)
    with pytest.raises(InvalidArgument, match="fewer"):
        open_device("/dev/dax0.0", 4 << 20, platform=FakePlatform(devdax_size=2 << 20))


def test_devdax_without_flush_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "flush_instruction", lambda: (None, "no flush here"))
    with pytest.raises(NotSupported, match="no flush here"):
        open_device("/dev/dax0.0", platform=FakePlatform(devdax_size=2 << 20))


@needs_flush
def test_map_sync_accepted_means_fsdax(tmp_path: Path) -> None:
    fake = FakePlatform(map_sync=True)
    with open_device(tmp_path / "f.img", 8192, create=True, platform=fake) as dev:
        assert dev.backend is Backend.FSDAX
        assert dev.granularity is Granularity.CACHE_LINE
        assert dev.persist_method == "cpu"
        assert dev.detection.power_fail_safe
        assert fake.mmap_calls[0][0] == MAP_SHARED_VALIDATE | MAP_SYNC


@needs_flush
def test_fsdax_on_eadr_region_is_byte(tmp_path: Path) -> None:
    fake = FakePlatform(map_sync=True, domain="cpu_cache")
    with open_device(tmp_path / "f.img", 8192, create=True, platform=fake) as dev:
        assert dev.granularity is Granularity.BYTE


def test_map_sync_refused_falls_back_to_msync(tmp_path: Path) -> None:
    fake = FakePlatform(map_sync=False)
    with open_device(tmp_path / "f.img", 8192, create=True, platform=fake) as dev:
        assert dev.backend is Backend.FILE
        assert dev.persist_method == "msync"
        assert [flags for flags, _ in fake.mmap_calls] == [
            MAP_SHARED_VALIDATE | MAP_SYNC,
            mmap.MAP_SHARED,
        ]


def test_fsdax_without_flush_instruction_uses_msync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "flush_instruction", lambda: (None, "no flush here"))
    fake = FakePlatform(map_sync=True)
    with open_device(tmp_path / "f.img", 8192, create=True, platform=fake) as dev:
        assert dev.backend is Backend.FSDAX
        assert dev.persist_method == "msync"
        assert "no flush here" in dev.detection.reasons["persist"]


def test_msync_requested_skips_map_sync(tmp_path: Path) -> None:
    fake = FakePlatform(map_sync=True)
    with open_device(tmp_path / "f.img", 8192, create=True, persist="msync", platform=fake) as dev:
        assert dev.persist_method == "msync"
        assert fake.mmap_calls == [(mmap.MAP_SHARED, 8192)]


def test_unexpected_mmap_error_propagates(tmp_path: Path) -> None:
    class Broken(Platform):
        def mmap(self, fd: int, length: int, flags: int, prot: int) -> mmap.mmap:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")

    with pytest.raises(OSError, match="allocate") as info:
        open_device(tmp_path / "f.img", 8192, create=True, platform=Broken())
    assert info.value.errno == errno.ENOMEM


def test_no_native_extension_means_msync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "_native", None)
    monkeypatch.setattr(cpu, "NATIVE_ERROR", "disabled by test")
    with open_device(tmp_path / "f.img", 8192, create=True) as dev:
        assert dev.persist_method == "msync"
        assert "native extension unavailable" in dev.detection.reasons["flush instruction"]
    with pytest.raises(NotSupported, match="native extension"):
        open_device(tmp_path / "f.img", persist="cpu")
