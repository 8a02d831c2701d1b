"""fsx through ``os.*``: the fsx workload on a file of any mounted filesystem.

Theory of operation
-------------------
``daxfs.testing.fsx`` drives a daxfs ``File`` and checks it against a model;
``OsFsx`` runs the same generator, model and checks on a file reached the way
a program reaches it -- ``os.open`` on a path, so on a FUSE mount of a daxfs
image every operation crosses the kernel and the FUSE front end
(daxfs.fuse).  ``OsFile`` gives a descriptor the ``File`` methods fsx calls:

    read / write       os.pread / os.pwrite
    truncate           os.ftruncate
    fallocate          fallocate(2) through ctypes, with its mode (KEEP_SIZE,
                       PUNCH_HOLE, ZERO_RANGE), errno from the kernel
    seek               os.lseek, SEEK_DATA and SEEK_HOLE
    mmap               mmap.mmap of the descriptor (the kernel's page cache on
                       FUSE); ``msync(offset, length)`` flushes the pages
                       around the range
    dread / dwrite     a second descriptor opened with O_DIRECT, aligned
                       buffers
    fsync              os.fsync

``remount`` calls the caller's ``remount`` (for a FUSE mount: unmount, fsck,
mount), then reopens the file: the whole file and the neighbour file must be
what the model says.  Crashes, power cuts, pins and the asynchronous API are
the Python API's and are not drawn (their weights are 0).

Invariants
  1. The same seed draws the same operations as ``Fsx`` with the same weights
     (the generator is Fsx's).
  2. Every result the kernel returns is compared with the model, as Fsx
     compares the API's.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
from collections.abc import Callable
from typing import Any, cast

from daxfs.testing.fsx import (
    NEIGHBOUR,
    NEIGHBOUR_DATA,
    PAGE,
    PATH,
    Fsx,
    FsxOptions,
    FsxStats,
    _diff,
    _Mismatch,
)

#: operations of the Python API only (crashes need a simulated device)
API_ONLY = ("pin", "aio", "crash", "powercut")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def os_options(**overrides: Any) -> FsxOptions:
    """FsxOptions for OsFsx: the API-only operations off."""
    opts = FsxOptions(**overrides)
    for kind in API_ONLY:
        opts.weights[kind] = 0
    return opts


class OsMapping:
    """A shared mapping of ``[offset, offset+length)`` of a descriptor (mmap.mmap)."""

    def __init__(self, fd: int, offset: int, length: int, access: str) -> None:
        mode = mmap.ACCESS_READ if access == "read" else mmap.ACCESS_WRITE
        self._map = mmap.mmap(fd, length, offset=offset, access=mode)

    def __getitem__(self, index: slice) -> bytes:
        return self._map[index]

    def __setitem__(self, index: slice, data: bytes) -> None:
        self._map[index] = data

    def msync(self, offset: int, length: int) -> None:
        """msync(2) of the pages holding ``[offset, offset+length)`` of the mapping."""
        start = offset - offset % PAGE
        self._map.flush(start, offset + length - start)

    def close(self) -> None:
        self._map.close()


class OsFile:
    """The File methods fsx calls, on an OS file descriptor."""

    def __init__(self, path: str, flags: int) -> None:
        self.path = path
        self.fd = os.open(path, flags, 0o644)

    def __enter__(self) -> OsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def preadinto(self, buffer: Any, offset: int) -> int:
        return os.preadv(self.fd, [buffer], offset)

    def pwrite(self, data: Any, offset: int) -> int:
        return os.pwrite(self.fd, data, offset)

    def truncate(self, size: int) -> int:
        os.ftruncate(self.fd, size)
        return size

    def fallocate(self, offset: int, length: int, mode: int = 0) -> None:
        """fallocate(2).

        Raises:
            OSError: the kernel's errno, naming the file.
        """
        if _libc.fallocate(self.fd, mode, offset, length) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"fallocate: {os.strerror(code)}", self.path)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self.fd, offset, whence)

    def mmap(self, offset: int = 0, length: int | None = None, *, access: str = "write") -> Any:
        size = os.fstat(self.fd).st_size - offset if length is None else length
        return OsMapping(self.fd, offset, size, access)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class OsFsx(Fsx):
    """fsx on ``directory``/fsx of a mounted filesystem, through os.*.

    ``remount`` (optional) unmounts, checks and mounts the filesystem again;
    without it the ``remount`` operation only closes and reopens the file.
    """

    def __init__(
        self,
        seed: int,
        directory: str,
        options: FsxOptions | None = None,
        *,
        remount: Callable[[], None] | None = None,
    ) -> None:
        # Fsx's state without its device and mount (Fsx.__init__ makes both)
        self.seed = seed
        self.options = options or os_options()
        self.rng = random.Random(seed)
        self.dev = None  # type: ignore[assignment]
        self.can_crash = False
        self.path = directory + PATH
        self.neighbour = directory + NEIGHBOUR
        self.model = bytearray()
        self.stats = FsxStats()
        self.ops = []
        self._aligned = None
        self.fs = None  # type: ignore[assignment]
        self._remount_fs = remount
        with open(self.neighbour, "wb") as g:
            g.write(NEIGHBOUR_DATA)
        self.f = cast(Any, OsFile(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC))

    def close(self) -> None:
        """Close the file (checking the filesystem is the caller's: its unmount)."""
        self.f.close()

    def _direct(self) -> Any:
        return OsFile(self.path, os.O_RDWR | os.O_DIRECT)

    def _remount(self) -> None:
        self.f.close()
        if self._remount_fs is not None:
            self._remount_fs()
            self.stats.remounts += 1
        self.f = cast(Any, OsFile(self.path, os.O_RDWR))
        self._check_all("after remount")

    def _check_all(self, when: str) -> None:
        got = self.f.pread(len(self.model) + 1, 0)
        if got != self.model:
            raise _Mismatch(f"{when}: file {_diff(got, bytes(self.model), 0)}")
        with open(self.neighbour, "rb") as g:
            if g.read() != NEIGHBOUR_DATA:
                raise _Mismatch(f"{when}: the neighbour file changed")


__all__ = ["API_ONLY", "OsFile", "OsFsx", "OsMapping", "os_options"]
