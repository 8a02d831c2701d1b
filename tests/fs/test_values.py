"""Values out of range are clean errors, of the kinds ``os`` raises for them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import daxfs
from daxfs.errors import FileTooLarge, OutOfRange
from daxfs.testing import SimulatedPmem

SIZE = 16 << 20


@pytest.fixture
def fs() -> daxfs.FileSystem:
    dev = SimulatedPmem(SIZE)
    daxfs.mkfs(dev)
    filesystem = daxfs.mount(dev)
    with filesystem.open("/f", "wb") as f:
        f.write(b"f")
    return filesystem


@pytest.mark.parametrize(
    "ns", [(1 << 63, 0), (0, 1 << 63), (-(1 << 63) - 1, 0), (1 << 80, 0)], ids=str
)
def test_utime_ns_beyond_the_format_is_overflow(fs: daxfs.FileSystem, ns: tuple[int, int]) -> None:
    before = fs.stat("/f")
    with pytest.raises(OverflowError, match="signed 64-bit") as info:
        fs.utime("/f", ns=ns)
    assert isinstance(info.value, OutOfRange)
    assert info.value.errno == errno.EOVERFLOW
    assert info.value.filename == "/f"
    assert fs.stat("/f").st_mtime_ns == before.st_mtime_ns


def test_utime_extremes_that_fit_are_stored(fs: daxfs.FileSystem) -> None:
    fs.utime("/f", ns=((1 << 63) - 1, -(1 << 63)))
    s = fs.stat("/f")
    assert (s.st_atime_ns, s.st_mtime_ns) == ((1 << 63) - 1, -(1 << 63))


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"ns": (1.5, 0)}, TypeError),
        ({"ns": (0,)}, TypeError),
        ({"ns": [0, 0]}, TypeError),
        ({"times": (0,)}, TypeError),
        ({"times": ("a", 0)}, TypeError),
        ({"times": (float("nan"), 0)}, ValueError),
        ({"times": (float("inf"), 0)}, OverflowError),
        ({"times": (1e19, 0)}, OverflowError),
    ],
    ids=str,
)
def test_utime_bad_values_fail_as_os_does(
    fs: daxfs.FileSystem, tmp_path: Path, kwargs: dict[str, object], exc: type[Exception]
) -> None:
    host = tmp_path / "f"
    host.touch()
    with pytest.raises(exc):
        os.utime(host, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(exc):
        fs.utime("/f", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("uid", [1 << 32, -2, 1 << 64])
def test_chown_out_of_range_is_overflow(fs: daxfs.FileSystem, tmp_path: Path, uid: int) -> None:
    host = tmp_path / "f"
    host.touch()
    with pytest.raises(OverflowError):
        os.chown(host, uid, -1)
    with pytest.raises(OverflowError, match="not a 32-bit id") as info:
        fs.chown("/f", uid, -1)
    assert info.value.errno == errno.EOVERFLOW
    with pytest.raises(OverflowError):
        fs.chown("/f", -1, uid)
    assert fs.stat("/f").st_uid == os.getuid()


def test_chown_minus_one_in_either_spelling_leaves_the_id(fs: daxfs.FileSystem) -> None:
    fs.chown("/f", 1234, 5678)
    fs.chown("/f", -1, 0xFFFFFFFF)
    s = fs.stat("/f")
    assert (s.st_uid, s.st_gid) == (1234, 5678)
    fs.chown("/f", 0xFFFFFFFE, 0)
    s = fs.stat("/f")
    assert (s.st_uid, s.st_gid) == (0xFFFFFFFE, 0)


def test_chown_wrong_type_is_type_error(fs: daxfs.FileSystem) -> None:
    with pytest.raises(TypeError):
        fs.chown("/f", 1.0, -1)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [1 << 63, (1 << 60) + 4096, 1 << 100])
def test_mkfs_of_an_impossible_size_is_efbig_naming_it(shm_path: Path, size: int) -> None:
    with pytest.raises(FileTooLarge, match="at most 1 EiB") as info:
        daxfs.mkfs(shm_path, size)
    assert info.value.errno == errno.EFBIG
    assert str(size) in str(info.value)
    assert not shm_path.exists()
