"""The raw File and its io wrappers: positional I/O, sparse files, fallocate,
errors (EBADF, EFBIG, ENOSPC, EROFS, EBUSY) and concurrency.

Where the host can say what Linux does (SEEK_DATA/SEEK_HOLE, fallocate
modes and errors, text mode) the same operations run on a file on the host's
ext4 or xfs (pytest's tmp_path) and the results are compared.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import gc
import io
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import daxfs
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from daxfs.fs.file import SEEK_DATA, SEEK_HOLE, File
from daxfs.fs.fsck import fsck
from daxfs.testing import SimulatedPmem
from daxfs.testing.posix import Step, run_steps

BLOCK = 4096
MAX_FILE_SIZE = 1 << 56
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def put(fs: daxfs.FileSystem, path: str, data: bytes) -> None:
    with fs.open(path, "wb", buffering=0) as f:
        assert f.write(data) == len(data)


def get(fs: daxfs.FileSystem, path: str) -> bytes:
    with fs.open(path, "rb") as f:
        data: bytes = f.read()
        return data


def fails(errno_code: int, call: Any, *args: Any, path: str | None = None) -> OSError:
    """Run ``call`` expecting OSError ``errno_code``, naming ``path`` in its message."""
    with pytest.raises(OSError, match=r"^\[Errno \d+\]") as info:
        call(*args)
    assert info.value.errno == errno_code, info.value
    if path is not None:
        assert path in str(info.value), info.value
    return info.value


def fsck_clean(fs: daxfs.FileSystem, dev: SimulatedPmem) -> None:
    fs.unmount()
    report = fsck(dev)
    assert report.clean, str(report)


# -- raw File and wrappers ---------------------------------------------------------------


def test_buffering_0_returns_the_raw_file(fs: daxfs.FileSystem) -> None:
    with fs.open("/f", "wb+", buffering=0) as f:
        assert isinstance(f, File)
        assert isinstance(f, io.RawIOBase)
        assert (f.name, f.mode) == ("/f", "rb+")
        assert f.readable()
        assert f.writable()
        assert f.seekable()
    with fs.open("/f", "rb") as f:
        assert isinstance(f, io.BufferedReader)
        assert isinstance(f.raw, File)  # type: ignore[attr-defined]
    with fs.open("/f", "r+b") as f:
        assert isinstance(f, io.BufferedRandom)
    with fs.open("/f", "a") as f:
        assert isinstance(f, io.TextIOWrapper)
        assert isinstance(f.buffer, io.BufferedWriter)
        assert f.mode == "a"
    with fs.open("/f", "rb", buffering=100) as f:
        assert isinstance(f, io.BufferedReader)


def test_open_arguments_as_builtins_open(fs: daxfs.FileSystem) -> None:
    put(fs, "/f", b"abc")
    with pytest.raises(TypeError):
        fs.open("/f", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fs.open("/f", "rb", buffering=1.5)  # type: ignore[arg-type]
    with pytest.warns(RuntimeWarning, match="line buffering"), fs.open("/f", "rb", 1) as f:
        assert isinstance(f, io.BufferedReader)  # the default size instead
    with fs.open("/f", "rb", buffering=-7) as f:  # any negative: the default size
        assert f.read() == b"abc"
    with pytest.raises(LookupError):
        fs.open("/f", "r", encoding="no-such-codec")
    assert fs.open_files() == []  # the raw file was closed


def test_readinto_fills_the_callers_buffer(fs: daxfs.FileSystem) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes, over two block boundaries
    put(fs, "/f", data)
    with fs.open("/f", "rb", buffering=0) as f:
        buf = bytearray(5000)
        assert f.readinto(buf) == 5000
        assert buf == data[:5000]
        view = memoryview(buf)[100:200]
        assert f.readinto(view) == 100  # into a slice: lands in the bytearray
        assert buf[100:200] == data[5000:5100]
        assert buf[:100] == data[:100]
        words = array.array("I", bytes(16))
        assert f.readinto(words) == 16  # any contiguous buffer, counted in bytes
        assert words.tobytes() == data[5100:5116]
        big = bytearray(b"\xff" * 8000)
        assert f.readinto(big) == len(data) - 5116  # short at the end of file
        assert big[: len(data) - 5116] == data[5116:]
        assert big[len(data) - 5116 :] == b"\xff" * (8000 - (len(data) - 5116))
        assert f.readinto(bytearray(10)) == 0  # at EOF
        assert f.tell() == len(data)


def test_pread_pwrite_preadinto_leave_the_position(fs: daxfs.FileSystem) -> None:
    put(fs, "/f", b"0123456789")
    with fs.open("/f", "rb+", buffering=0) as f:
        f.seek(3)
        assert f.pread(4, 2) == b"2345"
        assert f.pread(100, 8) == b"89"
        assert f.pread(5, 10) == b""
        assert f.pread(5, 1 << 40) == b""
        assert f.pread(0, 0) == b""
        assert f.pwrite(b"AB", 0) == 2
        assert f.pwrite(b"Z", 15) == 1  # past the end: the gap reads as zeros
        assert f.tell() == 3
        out = np.zeros(20, dtype=np.uint8)
        assert f.preadinto(out, 0) == 16
        assert out.tobytes() == b"AB23456789\0\0\0\0\0Z\0\0\0\0"
        buf = bytearray(4)
        assert f.preadinto(memoryview(buf)[1:3], 4) == 2
        assert buf == b"\x0045\x00"
        assert f.read() == b"3456789\0\0\0\0\0Z"
        fails(errno.EINVAL, f.pread, 1, -1, path="/f")
        fails(errno.EINVAL, f.pwrite, b"x", -1, path="/f")
        fails(errno.EINVAL, f.preadinto, bytearray(1), -5, path="/f")
        with pytest.raises(TypeError):
            f.pread(1, "0")  # type: ignore[arg-type]


def test_pwrite_in_append_mode_goes_to_the_end(fs: daxfs.FileSystem) -> None:
    """As Linux with O_APPEND (POSIX says the offset is used; Linux ignores it)."""
    put(fs, "/f", b"abc")
    with fs.open("/f", "ab", buffering=0) as f:
        assert f.tell() == 3
        assert f.pwrite(b"XY", 0) == 2
    assert get(fs, "/f") == b"abcXY"


def test_seek_and_tell(fs: daxfs.FileSystem) -> None:
    put(fs, "/f", b"abcdef")
    with fs.open("/f", "rb", buffering=0) as f:
        assert f.seek(2) == 2
        assert f.seek(2, os.SEEK_CUR) == 4
        assert f.seek(-1, os.SEEK_END) == 5
        assert f.read() == b"f"
        assert f.seek(100) == 100  # past the end is fine
        assert f.read() == b""
        fails(errno.EINVAL, f.seek, -1, path="/f")
        fails(errno.EINVAL, f.seek, -7, os.SEEK_END, path="/f")
        fails(errno.EINVAL, f.seek, 0, 42, path="/f")
        assert f.tell() == 100  # failed seeks do not move
        with pytest.raises(TypeError):
            f.seek(1.5)  # type: ignore[arg-type]


# -- sparse files: SEEK_DATA / SEEK_HOLE, against the host ------------------------------


def host_fs_type(path: Path) -> str:
    best, kind = "", ""
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            point, fstype = fields[4], fields[fields.index("-") + 1]
            if str(path).startswith(point) and len(point) >= len(best):
                best, kind = point, fstype
    return kind


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    if host_fs_type(tmp_path) not in ("ext4", "xfs"):
        pytest.skip("the host oracle for sparse files needs ext4 or xfs (4 KiB blocks)")
    if os.statvfs(tmp_path).f_bsize != BLOCK:
        pytest.skip("the host filesystem's block size is not 4 KiB")
    return tmp_path


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def host_fallocate(fd: int, offset: int, length: int, mode: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class HostFile:
    """The host's side of a raw file: os calls on a descriptor."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def pwrite(self, data: bytes, offset: int) -> int:
        return os.pwrite(self.fd, data, offset)

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def fallocate(self, offset: int, length: int, mode: int = 0) -> None:
        host_fallocate(self.fd, offset, length, mode)

    def seek(self, offset: int, whence: int) -> int:
        return os.lseek(self.fd, offset, whence)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        os.close(self.fd)


def outcome(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except OSError as exc:
        return f"errno {errno.errorcode[exc.errno or 0]}"


def seek_map(f: Any, size: int) -> list[tuple[int, Any, Any]]:
    probes = sorted(
        {0, 1, size - 1, size, size + 1, -1}
        | {b * BLOCK + d for b in range(size // BLOCK + 2) for d in (0, 1, BLOCK - 1)}
    )
    return [
        (p, outcome(f.seek, p, SEEK_DATA), outcome(f.seek, p, SEEK_HOLE))
        for p in probes
        if p <= size + 1
    ]


SPARSE_LAYOUT: list[tuple[str, tuple[Any, ...]]] = [
    ("pwrite", (b"a" * 100, 0)),  # data in block 0
    ("pwrite", (b"b" * 5000, 3 * BLOCK + 10)),  # blocks 3-4
    ("fallocate", (8 * BLOCK, 3 * BLOCK, FALLOC_FL_KEEP_SIZE)),  # unwritten 8-10
    ("pwrite", (b"c" * 3, 12 * BLOCK)),  # block 12: size 12 blocks + 3
    ("truncate", (14 * BLOCK + 7,)),  # a hole at the end
    ("fallocate", (16 * BLOCK, BLOCK, FALLOC_FL_KEEP_SIZE)),  # unwritten, past the end
]


def test_seek_data_and_hole_match_the_host(fs: daxfs.FileSystem, host_dir: Path) -> None:
    host = HostFile(host_dir / "sparse")
    try:
        with fs.open("/sparse", "wb+", buffering=0) as f:
            for op, args in SPARSE_LAYOUT:
                getattr(f, op)(*args)
                getattr(host, op)(*args)
                os.fsync(host.fd)
                assert f.stat().st_size == host.size()
                assert seek_map(f, host.size()) == seek_map(host, host.size()), (op, args)
            assert f.pread(1 << 20, 0) == host.pread(1 << 20, 0)
            fails(errno.ENXIO, f.seek, f.stat().st_size, SEEK_DATA, path="/sparse")
    finally:
        host.close()


def test_seek_data_in_an_empty_file(fs: daxfs.FileSystem) -> None:
    with fs.open("/e", "wb+", buffering=0) as f:
        fails(errno.ENXIO, f.seek, 0, SEEK_DATA, path="/e")
        fails(errno.ENXIO, f.seek, 0, SEEK_HOLE, path="/e")
        f.truncate(10 * BLOCK)  # all hole
        fails(errno.ENXIO, f.seek, 0, SEEK_DATA, path="/e")
        assert f.seek(5, SEEK_HOLE) == 5
        assert f.tell() == 5


def test_unwritten_extents_read_as_zeros_and_count_as_holes(fs: daxfs.FileSystem) -> None:
    """Documented: an UNWRITTEN (preallocated) extent is a hole to SEEK_DATA."""
    with fs.open("/f", "wb+", buffering=0) as f:
        f.fallocate(0, 4 * BLOCK)
        assert f.stat().st_size == 4 * BLOCK
        assert f.stat().st_blocks == 4 * BLOCK // 512
        assert f.pread(4 * BLOCK, 0) == bytes(4 * BLOCK)
        fails(errno.ENXIO, f.seek, 0, SEEK_DATA)
        f.pwrite(b"x", BLOCK + 5)
        assert f.seek(0, SEEK_DATA) == BLOCK
        assert f.seek(BLOCK, SEEK_HOLE) == 2 * BLOCK
        assert f.pread(3, BLOCK + 4) == b"\0x\0"


# -- fallocate -------------------------------------------------------------------------


# (steps, whether SEEK_DATA/SEEK_HOLE must agree with the host): not where
# unwritten extents are, which ext4 often reports as data (it zeroes small
# unwritten extents out to written ones), daxfs always as holes
FALLOCATE_CASES: dict[str, tuple[list[tuple[str, tuple[Any, ...]]], bool]] = {
    "allocate-grows": ([("fallocate", (100, 3 * BLOCK, 0))], True),
    "allocate-past-the-end": ([("fallocate", (5 * BLOCK, 3 * BLOCK, 0))], False),
    "keep-size": ([("fallocate", (0, 5 * BLOCK, FALLOC_FL_KEEP_SIZE))], False),
    "punch-in-data": ([("fallocate", (BLOCK - 10, BLOCK + 20, PUNCH))], True),
    "punch-whole-blocks": ([("fallocate", (BLOCK, 2 * BLOCK, PUNCH))], True),
    "punch-inside-one-block": ([("fallocate", (5, 10, PUNCH))], True),
    "punch-beyond-the-end": ([("fallocate", (5 * BLOCK, 10 * BLOCK, PUNCH))], True),
    "zero-range": ([("fallocate", (BLOCK + 1, BLOCK, FALLOC_FL_ZERO_RANGE))], False),
    "zero-range-in-data": ([("fallocate", (1, 2 * BLOCK, FALLOC_FL_ZERO_RANGE))], False),
    "allocate-then-write": (
        [("fallocate", (0, 8 * BLOCK, 0)), ("pwrite", (b"w" * 10, 3 * BLOCK - 5))],
        False,
    ),
    "punch-then-write": (
        [("fallocate", (0, 2 * BLOCK, PUNCH)), ("pwrite", (b"q", BLOCK))],
        True,
    ),
    "length-zero": ([("fallocate", (0, 0, 0))], True),
    "negative-length": ([("fallocate", (0, -5, 0))], True),
    "negative-offset": ([("fallocate", (-1, 10, 0))], True),
    "unknown-mode": ([("fallocate", (0, 10, 0x100))], True),
    "punch-without-keep-size": ([("fallocate", (0, 10, FALLOC_FL_PUNCH_HOLE))], True),
    "punch-and-zero": ([("fallocate", (0, 10, PUNCH | FALLOC_FL_ZERO_RANGE))], True),
}


def fallocate_against_host(
    fs: daxfs.FileSystem, host_dir: Path, steps: list[tuple[str, tuple[Any, ...]]], seek: bool
) -> None:
    """Run ``steps`` on a 3-block-and-4-byte file on both sides; compare everything."""
    initial = bytes(range(256)) * (3 * BLOCK // 256) + b"tail"
    host = HostFile(host_dir / "f")
    try:
        with fs.open("/f", "wb+", buffering=0) as f:
            for side in (f, host):
                side.pwrite(initial, 0)
            os.fsync(host.fd)  # no delayed allocation for ext4 to merge with what follows
            for op, args in steps:
                assert outcome(getattr(f, op), *args) == outcome(getattr(host, op), *args)
                os.fsync(host.fd)
                size = host.size()
                assert f.stat().st_size == size
                assert f.stat().st_blocks == os.fstat(host.fd).st_blocks
                assert f.pread(size + BLOCK, 0) == host.pread(size + BLOCK, 0)
                if seek:
                    assert seek_map(f, size) == seek_map(host, size)
    finally:
        host.close()


@pytest.mark.parametrize("case", sorted(FALLOCATE_CASES))
def test_fallocate_matches_the_host(fs: daxfs.FileSystem, host_dir: Path, case: str) -> None:
    fallocate_against_host(fs, host_dir, *FALLOCATE_CASES[case])


@pytest.mark.parametrize("keep_size", [0, FALLOC_FL_KEEP_SIZE])
def test_zero_range_allocates_holes(fs: daxfs.FileSystem, host_dir: Path, keep_size: int) -> None:
    steps = [("fallocate", (2 * BLOCK, 4 * BLOCK, FALLOC_FL_ZERO_RANGE | keep_size))]
    fallocate_against_host(fs, host_dir, steps, seek=False)


def test_punch_through_the_end_frees_the_last_block(fs: daxfs.FileSystem, host_dir: Path) -> None:
    fallocate_against_host(fs, host_dir, [("fallocate", (BLOCK - 10, 3 * BLOCK, PUNCH))], True)


def test_fallocate_counts_blocks(fs: daxfs.FileSystem) -> None:
    with fs.open("/f", "wb+", buffering=0) as f:
        f.fallocate(0, 4 * BLOCK, FALLOC_FL_KEEP_SIZE)
        assert (f.stat().st_size, f.stat().st_blocks) == (0, 4 * 8)
        f.write(b"x" * (4 * BLOCK))
        f.fallocate(BLOCK, 2 * BLOCK, PUNCH)
        assert (f.stat().st_size, f.stat().st_blocks) == (4 * BLOCK, 2 * 8)
        assert f.pread(4 * BLOCK, 0) == b"x" * BLOCK + bytes(2 * BLOCK) + b"x" * BLOCK
        fails(errno.EFBIG, f.fallocate, MAX_FILE_SIZE - BLOCK, 2 * BLOCK, 0, path="/f")
    with fs.open("/f", "rb", buffering=0) as f:
        fails(errno.EBADF, f.fallocate, 0, BLOCK, 0, path="/f")
    with fs.open("/f", "r+b", buffering=0) as f, pytest.raises(TypeError):
        f.fallocate(0, 1.0)  # type: ignore[arg-type]


# -- truncate ---------------------------------------------------------------------------


@pytest.mark.parametrize("buffered", [False, True])
def test_truncate_grow_shrink_reads_zeros(fs: daxfs.FileSystem, buffered: bool) -> None:
    data = b"D" * (2 * BLOCK + 100)
    put(fs, "/f", data)
    with fs.open("/f", "rb+", buffering=-1 if buffered else 0) as f:
        f.seek(7)
        assert f.truncate(BLOCK + 10) == BLOCK + 10
        assert f.tell() == 7  # truncate does not move the position
        assert f.truncate(5 * BLOCK) == 5 * BLOCK
        f.seek(0)
        assert f.read() == b"D" * (BLOCK + 10) + bytes(4 * BLOCK - 10)
        f.seek(3)
        assert f.truncate() == 3  # default: the position
        assert f.truncate(BLOCK) == BLOCK
        f.seek(0)
        assert f.read() == b"DDD" + bytes(BLOCK - 3)  # the old tail is gone
        fails(errno.EINVAL, f.truncate, -1, path="/f")
    assert fs.stat("/f").st_size == BLOCK
    fs.truncate("/f", 0)
    assert fs.stat("/f").st_blocks == 0
    fs.truncate("/f", MAX_FILE_SIZE)  # the largest size: all hole
    assert fs.stat("/f").st_size == MAX_FILE_SIZE
    fails(errno.EFBIG, fs.truncate, "/f", MAX_FILE_SIZE + 1, path="/f")


# -- errors on closed files and wrong modes ---------------------------------------------


RAW_CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("read", (1,)),
    ("readall", ()),
    ("readinto", (bytearray(1),)),
    ("write", (b"x",)),
    ("pread", (1, 0)),
    ("preadinto", (bytearray(1), 0)),
    ("pwrite", (b"x", 0)),
    ("seek", (0,)),
    ("tell", ()),
    ("truncate", (0,)),
    ("fallocate", (0, 1)),
    ("fsync", ()),
    ("fdatasync", ()),
    ("stat", ()),
    ("readable", ()),
    ("writable", ()),
    ("seekable", ()),
]


@pytest.mark.parametrize(("method", "args"), RAW_CALLS, ids=[c[0] for c in RAW_CALLS])
def test_closed_raw_file_is_ebadf_and_valueerror(
    fs: daxfs.FileSystem, method: str, args: tuple[Any, ...]
) -> None:
    f = fs.open("/f", "wb+", buffering=0)
    f.close()
    f.close()  # closing twice is fine
    assert f.closed
    with pytest.raises(ValueError, match="closed file") as info:
        getattr(f, method)(*args)
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.EBADF
    assert "/f" in str(info.value)


@pytest.mark.parametrize("mode", ["rb", "r", "wb", "w", "ab+", "r+"])
def test_closed_wrapped_file_raises_valueerror(fs: daxfs.FileSystem, mode: str) -> None:
    fs.open("/f", "a").close()
    f = fs.open("/f", mode)
    f.close()
    with pytest.raises(ValueError, match="closed file"):
        f.read() if "r" in mode or "+" in mode else f.write("x" if "b" not in mode else b"x")
    assert fs.open_files() == []


@pytest.mark.parametrize(
    ("method", "args"),
    [("write", (b"x",)), ("pwrite", (b"x", 0)), ("truncate", (0,)), ("fallocate", (0, 1))],
)
def test_writing_a_read_only_file_is_unsupported_ebadf(
    fs: daxfs.FileSystem, method: str, args: tuple[Any, ...]
) -> None:
    put(fs, "/f", b"keep")
    with fs.open("/f", "rb", buffering=0) as f:
        with pytest.raises(io.UnsupportedOperation) as info:
            getattr(f, method)(*args)
        assert isinstance(info.value, OSError)
        assert info.value.errno == errno.EBADF
        assert "/f" in str(info.value)
        assert not f.writable()
    assert get(fs, "/f") == b"keep"


@pytest.mark.parametrize(
    ("method", "args"),
    [("read", (1,)), ("readall", ()), ("readinto", (bytearray(1),)), ("pread", (1, 0))],
)
def test_reading_a_write_only_file_is_unsupported_ebadf(
    fs: daxfs.FileSystem, method: str, args: tuple[Any, ...]
) -> None:
    with fs.open("/f", "wb", buffering=0) as f:
        with pytest.raises(io.UnsupportedOperation) as info:
            getattr(f, method)(*args)
        assert info.value.errno == errno.EBADF  # type: ignore[attr-defined]
        assert not f.readable()


def test_fileno_is_unsupported(fs: daxfs.FileSystem) -> None:
    with fs.open("/f", "wb", buffering=0) as f, pytest.raises(io.UnsupportedOperation):
        f.fileno()


# -- text mode, against the host ----------------------------------------------------------

TEXT_STEPS: dict[str, list[Step]] = {
    "utf8-seek-tell-cookies": [
        ("open", "/t", "w+", [("write", "h\u00e9llo\nw\u00f6rld\n\u20ac!"), ("seek", 0)]),
        (
            "open",
            "/t",
            "r",
            [("readline",), ("tell",), ("read", 3), ("tell",), ("seek", 0), ("read",)],
        ),
    ],
    "utf16-append-and-reread": [
        ("open", "/t", "w", [("write", "one\n")], {"encoding": "utf-16-le"}),
        ("open", "/t", "a", [("tell",), ("write", "two\n")], {"encoding": "utf-16-le"}),
        ("open", "/t", "r", [("readlines",)], {"encoding": "utf-16-le"}),
        ("get", "/t"),
    ],
    "errors-handlers": [
        ("put", "/t", b"ok\xff\xfeok\r\n"),
        ("open", "/t", "r", [("read",)], {"errors": "strict"}),
        ("open", "/t", "r", [("read",)], {"errors": "surrogateescape"}),
        ("open", "/t", "r", [("read",)], {"errors": "ignore", "newline": ""}),
        ("open", "/t", "w", [("write", "\udcff")], {"errors": "surrogateescape"}),
        ("get", "/t"),
    ],
    "line-buffering": [
        ("open", "/t", "w", [("write", "a\nb"), ("tell",)], {"buffering": 1}),
        ("get", "/t"),
    ],
    "universal-newlines-tell": [
        ("put", "/t", b"a\r\nb\rc\nd"),
        ("open", "/t", "r", [("readline",), ("tell",), ("readline",), ("readline",), ("tell",)]),
        ("open", "/t", "r", [("read",)], {"newline": "\r\n"}),
    ],
}


@pytest.mark.parametrize("case", sorted(TEXT_STEPS))
def test_text_mode_matches_the_host(case: str) -> None:
    run_steps(TEXT_STEPS[case])


# -- EFBIG --------------------------------------------------------------------------------


def test_writes_at_or_past_the_maximum_size_are_efbig(fs: daxfs.FileSystem) -> None:
    with fs.open("/big", "wb+", buffering=0) as f:
        fails(errno.EFBIG, f.pwrite, b"x", MAX_FILE_SIZE, path="/big")
        fails(errno.EFBIG, f.pwrite, b"x", MAX_FILE_SIZE + 12345, path="/big")
        f.seek(MAX_FILE_SIZE)
        fails(errno.EFBIG, f.write, b"x", path="/big")
        assert f.stat().st_size == 0  # nothing happened
        assert f.pwrite(b"ab", MAX_FILE_SIZE - 1) == 1  # short: up to the limit
        assert f.stat().st_size == MAX_FILE_SIZE
        assert f.pread(5, MAX_FILE_SIZE - 1) == b"a"
        fails(errno.EFBIG, f.truncate, MAX_FILE_SIZE + 1, path="/big")
        f.seek(MAX_FILE_SIZE - 1)
        assert f.read() == b"a"
    f = fs.open("/big", "ab")  # buffered: the error comes at flush
    f.write(b"y")
    fails(errno.EFBIG, f.flush, path="/big")
    fails(errno.EFBIG, f.close, path="/big")  # close flushes again, then closes anyway
    assert f.closed
    assert fs.open_files() == []
    assert fs.stat("/big").st_size == MAX_FILE_SIZE


# -- ENOSPC -------------------------------------------------------------------------------


def test_enospc_keeps_earlier_files_and_fsck_clean(
    fs: daxfs.FileSystem, dev: SimulatedPmem
) -> None:
    earlier = {f"/keep{i}": os.urandom(1000 * (i + 1)) for i in range(5)}
    fs.mkdir("/d")
    for path, data in earlier.items():
        put(fs, path, data)
    chunk = os.urandom(256 << 10)
    with fs.open("/fill", "wb", buffering=0) as f:
        written = 0
        with pytest.raises(OSError, match=r"/fill") as info:
            while True:
                written += f.write(chunk)
        assert info.value.errno == errno.ENOSPC
        assert f.stat().st_size == written  # the failed write wrote nothing
    assert written > 10 << 20
    fails(errno.ENOSPC, put, fs, "/one-more", os.urandom(1 << 20), path="/one-more")
    assert fs.stat("/one-more").st_size == 0
    created = 0
    with pytest.raises(OSError, match=r"/d/sub\d+") as info:  # inodes and directories
        for created in range(100_000):
            fs.mkdir(f"/d/sub{created}")
    assert info.value.errno == errno.ENOSPC
    assert not fs.exists(f"/d/sub{created}")
    assert len(fs.listdir("/d")) == created
    for path, data in earlier.items():
        assert get(fs, path) == data
    fsck_clean(fs, dev)
    with daxfs.mount(dev) as again:  # space comes back once something is freed
        for path, data in earlier.items():
            assert get(again, path) == data
        assert again.stat("/fill").st_size == written
        again.unlink("/fill")
        put(again, "/after", chunk * 8)
        assert get(again, "/after") == chunk * 8
    assert fsck(dev).clean


def test_overwriting_allocated_data_on_a_full_filesystem(fs: daxfs.FileSystem) -> None:
    put(fs, "/a", os.urandom(1 << 20))
    with fs.open("/fill", "wb", buffering=0) as f, pytest.raises(OSError, match="/fill"):
        while True:
            f.write(os.urandom(64 << 10))
    data = os.urandom(1 << 20)
    with fs.open("/a", "rb+", buffering=0) as f:
        assert f.pwrite(data, 0) == len(data)
    assert get(fs, "/a") == data


# -- read-only mount, EBUSY -------------------------------------------------------------


def readonly_changes(fs: daxfs.FileSystem) -> list[tuple[str, Any, tuple[Any, ...]]]:
    return [
        ("/f", fs.open, ("/f", "w")),
        ("/f", fs.open, ("/f", "a")),
        ("/f", fs.open, ("/f", "r+")),
        ("/new", fs.open, ("/new", "w")),
        ("/new", fs.open, ("/new", "x")),
        ("/new", fs.mkdir, ("/new",)),
        ("/new", fs.makedirs, ("/new/deeper",)),
        ("/d/e", fs.rmdir, ("/d/e",)),
        ("/f", fs.unlink, ("/f",)),
        ("/f", fs.rename, ("/f", "/g")),
        ("/f", fs.replace, ("/f", "/d/e")),
        ("/f2", fs.link, ("/f", "/f2")),
        ("/s", fs.symlink, ("/f", "/s")),
        ("/f", fs.chmod, ("/f", 0o600)),
        ("/f", fs.chown, ("/f", 1, 1)),
        ("/f", fs.utime, ("/f", (1, 1))),
        ("/f", fs.truncate, ("/f", 0)),
    ]


def test_readonly_mount_refuses_every_change(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        fs.makedirs("/d/e")
        put(fs, "/f", b"contents")
    with daxfs.mount(dev, readonly=True) as fs:
        assert fs.statvfs().f_flag & os.ST_RDONLY
        for path, call, args in readonly_changes(fs):
            fails(errno.EROFS, call, *args, path=path)
        assert get(fs, "/f") == b"contents"
        with fs.open("/f", "rb", buffering=0) as f:
            fails(errno.EBADF, f.write, b"x", path="/f")
            fails(errno.EBADF, f.truncate, 0, path="/f")
            assert f.pread(3, 2) == b"nte"
        assert sorted(fs.listdir("/")) == ["d", "f"]
        assert fs.listdir("/d") == ["e"]
        assert fs.stat("/f").st_size == 8
    assert fsck(dev).clean


def test_second_mount_is_ebusy(dev: SimulatedPmem, shm_path: Path) -> None:
    fs = daxfs.mount(dev)
    fails(errno.EBUSY, daxfs.mount, dev)
    fails(errno.EBUSY, lambda: daxfs.mount(dev, readonly=True))
    fs.unmount()
    daxfs.mount(dev).unmount()  # fine once unmounted
    daxfs.mkfs(str(shm_path), 16 << 20)
    with daxfs.mount(str(shm_path)):
        fails(errno.EBUSY, daxfs.mount, str(shm_path))
    daxfs.mount(str(shm_path)).unmount()


def test_unmount_with_open_files_is_ebusy(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    f = fs.open("/f", "w")
    g = fs.open("/f", "rb", buffering=0)
    fails(errno.EBUSY, fs.unmount, path="/f")
    assert fs.mounted
    f.write("still usable")
    f.close()
    fails(errno.EBUSY, fs.unmount)
    g.close()
    fs.unmount()
    assert not fs.mounted
    with daxfs.mount(dev) as again:
        assert get(again, "/f") == b"still usable"


def test_unlinked_open_file_lives_until_closed(fs: daxfs.FileSystem) -> None:
    free = fs.statvfs().f_bfree
    f = fs.open("/f", "wb+", buffering=0)
    f.write(b"z" * (64 * BLOCK))
    fs.unlink("/f")
    assert not fs.exists("/f")
    assert f.stat().st_nlink == 0
    f.write(b"more")
    f.seek(0)
    assert f.read(3) == b"zzz"
    assert fs.statvfs().f_bfree < free
    f.close()
    assert fs.statvfs().f_bfree == free


# -- threads ------------------------------------------------------------------------------


def run_threads(target: Any, count: int) -> None:
    """Run ``target(i)`` in ``count`` threads started together, switching often."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def wrapped(i: int) -> None:
        try:
            start.wait()
            target(i)
        except BaseException as exc:
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the threads inside operations
    try:
        threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_threads_writing_different_files(fs: daxfs.FileSystem, dev: SimulatedPmem) -> None:
    def writer(i: int) -> None:
        with fs.open(f"/t{i}", "wb", buffering=0) as f:
            for j in range(200):
                f.write(bytes([i]) * (j % 50 + 1))
        fs.mkdir(f"/dir{i}")
        fs.rename(f"/t{i}", f"/dir{i}/file")

    run_threads(writer, 6)
    expected_size = sum(j % 50 + 1 for j in range(200))
    for i in range(6):
        assert get(fs, f"/dir{i}/file") == bytes([i]) * expected_size
    fsck_clean(fs, dev)


def test_threads_writing_one_file(fs: daxfs.FileSystem, dev: SimulatedPmem) -> None:
    record = 100
    fs.open("/shared", "w").close()

    def pwriter(i: int) -> None:  # disjoint ranges, interleaved in the file
        with fs.open("/shared", "rb+", buffering=0) as f:
            for j in range(100):
                assert f.pwrite(bytes([i]) * record, (j * 4 + i) * record) == record

    run_threads(pwriter, 4)
    data = get(fs, "/shared")
    assert len(data) == 400 * record
    for k in range(400):
        assert data[k * record : (k + 1) * record] == bytes([k % 4]) * record

    def appender(i: int) -> None:  # each append is atomic: whole records, none lost
        with fs.open("/log", "ab", buffering=0) as f:
            for j in range(100):
                f.write(f"{i}:{j:03d};".encode())

    run_threads(appender, 4)
    records = get(fs, "/log").decode().split(";")[:-1]
    assert sorted(records) == sorted(f"{i}:{j:03d}" for i in range(4) for j in range(100))
    for i in range(4):  # each thread's records in its own order
        mine = [r for r in records if r.startswith(f"{i}:")]
        assert mine == sorted(mine)

    def reader(i: int) -> None:  # readers alongside a writer see whole records
        if i == 0:
            with fs.open("/shared", "rb+", buffering=0) as f:
                for j in range(200):
                    f.pwrite(bytes([9]) * record, (j % 400) * record)
        else:
            with fs.open("/shared", "rb", buffering=0) as f:
                for _ in range(200):
                    piece = f.pread(record, 7 * record)
                    assert piece in (bytes([7 % 4]) * record, bytes([9]) * record)

    run_threads(reader, 3)
    fsck_clean(fs, dev)


# -- resources ----------------------------------------------------------------------------


def open_memfds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone by now
            count += "memfd:" in os.readlink(f"/proc/self/fd/{fd}")
    return count


def test_an_unclosed_simulated_device_releases_its_memory() -> None:
    before = open_memfds()
    for _ in range(3):
        dev = SimulatedPmem(16 << 20)
        daxfs.mkfs(dev)
        daxfs.mount(dev).unmount()
        del dev
    gc.collect()
    assert open_memfds() == before


def test_pread_of_a_hole_before_the_cached_extent_reads_zeros(fs: daxfs.FileSystem) -> None:
    """Regression: a read in a hole once returned device bytes before the last extent used."""
    with fs.open("/holes", "wb+", buffering=0) as f:
        f.pwrite(b"D" * BLOCK, 3 * BLOCK)  # a hole of 3 blocks, then data
        put(fs, "/other", b"O" * 8 * BLOCK)  # data in the blocks before it on the device
        assert f.pread(4, 3 * BLOCK) == b"DDDD"  # caches the extent of block 3
        assert f.pread(100, 2 * BLOCK + 10) == bytes(100)  # in the hole before it
        buf = bytearray(100)
        assert f.preadinto(buf, BLOCK) == 100
        assert buf == bytes(100)
