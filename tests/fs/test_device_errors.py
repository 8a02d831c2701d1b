"""A device error reaches the caller as IOFailure (EIO) naming the path or the image.

The device raises a plain ``OSError(EIO)``, as PmemDevice does when msync
fails; ``daxfs.errors.naming`` turns it, at the filesystem's boundary, into
``IOFailure`` naming the operation's path (the image's name for mount,
unmount and sync), with the device's error chained as its cause.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import daxfs
from daxfs.errors import IOFailure
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.testing import SimulatedPmem
from tests import helpers

SIZE = 16 << 20
#: how errors of the whole filesystem (mount, unmount, sync) name a device without a path
NAME = f"<BrokenPmem of {SIZE} bytes>"


class BrokenPmem(SimulatedPmem):
    """Fails the next operation of ``failing`` ("drain" or "read") once, with a plain OSError."""

    failing: str | None = None

    def _fail(self, kind: str) -> None:
        if self.failing == kind:
            self.failing = None
            raise OSError(errno.EIO, f"device error at a {kind}")

    def drain(self) -> None:
        self._fail("drain")
        super().drain()

    def readinto(self, offset: int, buffer: object) -> int:
        self._fail("read")
        return super().readinto(offset, buffer)  # type: ignore[arg-type]


@pytest.fixture
def dev() -> BrokenPmem:
    device = helpers.formatted(SIZE, BrokenPmem)
    assert isinstance(device, BrokenPmem)
    return device


@pytest.fixture
def fs(dev: BrokenPmem) -> Iterator[daxfs.FileSystem]:
    fs = daxfs.mount(dev)
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(b"f" * 20 * BLOCK_SIZE)
    fs.mkdir("/d")
    yield fs
    dev.failing = None
    for f in fs.open_files():
        f.close()
    if fs.mounted:
        fs.unmount()
    assert fsck(dev).clean


def check_io_failure(info: pytest.ExceptionInfo[BaseException], name: str) -> None:
    exc = info.value
    assert isinstance(exc, IOFailure), repr(exc)
    assert exc.errno == errno.EIO
    assert exc.filename == name
    assert name in str(exc)
    assert isinstance(exc.__cause__, OSError)
    assert "device error" in str(exc.__cause__)


FILE_OPS: dict[str, Callable[[daxfs.File], object]] = {
    "write": lambda f: f.write(b"x" * 100),
    "pwrite": lambda f: f.pwrite(b"x" * 5 * BLOCK_SIZE, 3 * BLOCK_SIZE),
    "truncate": lambda f: f.truncate(10 * BLOCK_SIZE + 5),
    "fallocate": lambda f: f.fallocate(30 * BLOCK_SIZE, 4 * BLOCK_SIZE),
    "punch": lambda f: f.fallocate(0, BLOCK_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE),
}


@pytest.mark.parametrize("op", FILE_OPS)
def test_file_operations(dev: BrokenPmem, fs: daxfs.FileSystem, op: str) -> None:
    with fs.open("/f", "rb+", buffering=0) as f:
        dev.failing = "drain"
        with pytest.raises(OSError, match="device error") as info:
            FILE_OPS[op](f)
        check_io_failure(info, "/f")


def test_read(dev: BrokenPmem, fs: daxfs.FileSystem) -> None:
    with fs.open("/f", "rb", buffering=0) as f:
        dev.failing = "read"
        with pytest.raises(OSError, match="device error") as info:
            f.read(10)
        check_io_failure(info, "/f")


NAMESPACE_OPS: dict[str, tuple[Callable[[daxfs.FileSystem], object], str]] = {
    "create": (lambda fs: fs.open("/new", "wb").close(), "/new"),
    "mkdir": (lambda fs: fs.mkdir("/d/sub"), "/d/sub"),
    "rename": (lambda fs: fs.rename("/f", "/d/g"), "/d/g"),
    "unlink": (lambda fs: fs.unlink("/f"), "/f"),
    "rmdir": (lambda fs: fs.rmdir("/d"), "/d"),
    "link": (lambda fs: fs.link("/f", "/d/h"), "/d/h"),
    "symlink": (lambda fs: fs.symlink("/f", "/s"), "/s"),
    "chmod": (lambda fs: fs.chmod("/f", 0o600), "/f"),
    "truncate": (lambda fs: fs.truncate("/f", 0), "/f"),
}


@pytest.mark.parametrize("op", NAMESPACE_OPS)
def test_namespace_operations(dev: BrokenPmem, fs: daxfs.FileSystem, op: str) -> None:
    call, name = NAMESPACE_OPS[op]
    dev.failing = "drain"
    with pytest.raises(OSError, match="device error") as info:
        call(fs)
    check_io_failure(info, name)
    fs.unmount()
    fs = daxfs.mount(dev)  # a failed commit leaves the filesystem read-only until remount
    fs.unmount()


def test_fsync_and_msync_after_mapped_stores(dev: BrokenPmem, fs: daxfs.FileSystem) -> None:
    with fs.open("/f", "rb+", buffering=0) as f:
        m = f.mmap(0, 2 * BLOCK_SIZE)
        m[:4] = b"abcd"  # type: ignore[index]
        dev.failing = "drain"
        with pytest.raises(OSError, match="device error") as info:
            m.msync()
        check_io_failure(info, "/f")
        dev.failing = "drain"
        with pytest.raises(OSError, match="device error") as info:
            f.fsync()
        check_io_failure(info, "/f")
        f.fsync()  # the ranges stayed remembered: this one writes them back
        m.close()


def test_sync(dev: BrokenPmem, fs: daxfs.FileSystem) -> None:
    with fs.open("/f", "rb+", buffering=0) as f:
        m = f.mmap(0, BLOCK_SIZE)
        m[:4] = b"abcd"  # type: ignore[index]
        m.close()
    dev.failing = "drain"
    with pytest.raises(OSError, match="device error") as info:
        fs.sync()
    check_io_failure(info, NAME)
    assert fs.source == NAME


def test_close_of_the_last_holder_of_an_unlinked_file(
    dev: BrokenPmem, fs: daxfs.FileSystem
) -> None:
    f = fs.open("/f", "rb", buffering=0)
    fs.unlink("/f")
    dev.failing = "drain"
    with pytest.raises(OSError, match="device error") as info:
        f.close()  # frees the file
    check_io_failure(info, "/f")
    assert f.closed


def test_unmount(dev: BrokenPmem, fs: daxfs.FileSystem) -> None:
    dev.failing = "drain"
    with pytest.raises(OSError, match="device error") as info:
        fs.unmount()
    check_io_failure(info, NAME)
    assert not fs.mounted  # the device is released all the same
    daxfs.mount(dev).unmount()


def test_mount(dev: BrokenPmem) -> None:
    dev.failing = "drain"
    with pytest.raises(OSError, match="device error") as info:
        daxfs.mount(dev)
    check_io_failure(info, NAME)
    daxfs.mount(dev).unmount()  # released: mounts again


def test_mount_of_a_path_names_it(tmp_path: Path) -> None:
    """Damage found at mount names the image's path (as the device errors do)."""
    image = tmp_path / "x.img"
    daxfs.mkfs(image, SIZE)
    with open(image, "r+b") as raw:
        raw.write(b"\xff" * 64)
    with pytest.raises(daxfs.errors.Corrupted) as info:
        daxfs.mount(image, persist="cpu")
    assert info.value.filename == str(image)
    assert str(image) in str(info.value)
