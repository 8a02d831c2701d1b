"""The binding: mfusepy's FUSE class, with what daxfs needs that it does not pass on.

mfusepy (ctypes over libfuse3's high-level API) runs the session; this
subclass replaces some of its C-callback adapters:

* ``rename`` passes renameat2's flags on (mfusepy drops them);
* ``lseek`` exists (libfuse 3.8's callback; mfusepy declares it but has no
  adapter), for SEEK_DATA and SEEK_HOLE;
* ``utimens`` reads UTIME_NOW and UTIME_OMIT from the timespecs (mfusepy would
  turn them into nonsense nanosecond counts): now is ``None`` for both, omit
  is ``None`` for the one omitted;
* ``read`` copies straight from device memory into libfuse's reply buffer
  (``preadinto`` over a memoryview of it), and ``write`` passes a memoryview
  of the request buffer, so data is copied once each way instead of three
  times through ``bytes``;
* ``truncate``, ``chmod``, ``chown`` and ``utimens`` pass the file handle on
  (mfusepy drops it; with ``nullpath_ok`` libfuse then gives no path);
* ``fgetattr`` fills ``struct stat`` from the ``os.stat_result`` without a
  dict in between;
* ``init`` turns splice reads off and installs the wire tap (``_wire``): it
  answers fstat, fchmod, fchown, futimens and the xattr calls of an open file
  whose last name is gone from the open File, where libfuse's high-level API says ESTALE.

Errors: each adapter runs inside mfusepy's ``_wrapper`` (an OSError becomes
``-errno``); the operations raise OSErrors with the API's errno
(daxfs.fuse._ops).
"""

from __future__ import annotations

import ctypes
import shutil
from typing import Any

import mfusepy

from daxfs.fuse._wire import NOW, Tap, disable_splice_read, native_available, times_argument

UTIME_NOW = (1 << 30) - 1  # tv_nsec: set this time to now
UTIME_OMIT = (1 << 30) - 2  # tv_nsec: leave this time alone
_libfuse: Any = mfusepy._libfuse


def available() -> str | None:
    """Why a FUSE mount cannot work here (None: it can)."""
    import os

    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel or container)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (install the fuse3 package)"
    if mfusepy.fuse_version_major != 3:
        return f"libfuse {mfusepy.fuse_version_major} found, daxfs.fuse needs libfuse3"
    return None


def _buffer(address: Any, size: int) -> memoryview:
    """A writable memoryview of ``size`` bytes at a C pointer (no copy)."""
    addr = ctypes.cast(address, ctypes.c_void_p).value
    return memoryview((ctypes.c_char * size).from_address(addr or 0)).cast("B")


class DaxFUSE(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy.FUSE with renameat2 flags, lseek, UTIME_NOW/OMIT, one-copy I/O and the tap.

    With the Python tap the session runs libfuse's single-threaded loop: the
    multi-threaded one ends by pthread_cancel of its workers, and a worker
    cancelled inside the Python read while it waits for the GIL (its
    condition variable is a cancellation point) dies holding the GIL's mutex,
    so the process hangs at unmount (seen under gdb: the main thread in
    pthread_join of a worker stuck in unwind_stop on that mutex; about 2 in 5
    unmounts).  The C tap's read takes no GIL, and the replies, where it does,
    are sent with cancellation disabled.
    """

    #: the wire tap's read and writev: C (daxfs.fuse._tap) when built, or Python
    native_tap: bool | None = None

    def __init__(self, operations: Any, mountpoint: str, **kwargs: Any) -> None:
        if not self.uses_native_tap():
            kwargs["nothreads"] = True
        super().__init__(operations, mountpoint, **kwargs)

    @classmethod
    def uses_native_tap(cls) -> bool:
        """Whether a session of this class reads and writes through the C tap."""
        return cls.native_tap if cls.native_tap is not None else native_available()

    def init_fuse_3(self, conn: Any, config: Any) -> None:
        if conn:
            disable_splice_read(conn.contents)
        self.tap = Tap(self.operations, native=self.native_tap)
        self.tap.install(_libfuse, _libfuse.fuse_get_context().contents.fuse)
        super().init_fuse_3(conn, config)

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        enc, err = self.encoding, self.errors
        return int(self.operations.rename(old.decode(enc, err), new.decode(enc, err), flags))

    def _name(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    @staticmethod
    def _fh(fip: Any) -> int | None:
        return int(fip.contents.fh) if fip else None

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return int(self.operations.truncate(self._name(path), length, self._fh(fip)))

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        return int(self.operations.chmod(self._name(path), mode, self._fh(fip)))

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
        if ctypes.c_uint32(uid + 1).value == 0:  # (uid_t)-1: leave it
            uid = -1
        if ctypes.c_uint32(gid + 1).value == 0:
            gid = -1
        return int(self.operations.chown(self._name(path), uid, gid, self._fh(fip)))

    def lseek(self, path: bytes | None, offset: int, whence: int, fip: Any) -> int:
        name = None if path is None else path.decode(self.encoding, self.errors)
        return int(self.operations.lseek(name, offset, whence, fip.contents.fh))

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        name, fh = self._name(path), self._fh(fip)
        if not buf:
            return int(self.operations.utimens(name, None, fh))
        times: list[int | None] = []
        for ts in (buf.contents.actime, buf.contents.modtime):
            if ts.tv_nsec == UTIME_OMIT:
                times.append(None)
            elif ts.tv_nsec == UTIME_NOW:
                times.append(NOW)
            else:
                times.append(ts.tv_sec * 1_000_000_000 + ts.tv_nsec)
        return int(self.operations.utimens(name, times_argument(times[0], times[1]), fh))

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        return int(self.operations.readinto(_buffer(buf, size), offset, fip.contents.fh))

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        data = _buffer(buf, size).toreadonly()
        return int(self.operations.write(None, data, offset, fip.contents.fh))

    def fgetattr(self, path: bytes | None, buf: Any, fip: Any) -> int:
        name = None if path is None else path.decode(self.encoding, self.errors)
        fh = fip.contents.fh if fip else None
        result = self.operations.stat(name, fh)
        s = buf.contents
        ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
        s.st_ino = result.st_ino
        s.st_mode = result.st_mode
        s.st_nlink = result.st_nlink
        s.st_uid = result.st_uid
        s.st_gid = result.st_gid
        s.st_size = result.st_size
        s.st_blocks = result.st_blocks
        s.st_blksize = result.st_blksize
        s.st_atimespec.tv_sec, s.st_atimespec.tv_nsec = divmod(result.st_atime_ns, 1_000_000_000)
        s.st_mtimespec.tv_sec, s.st_mtimespec.tv_nsec = divmod(result.st_mtime_ns, 1_000_000_000)
        s.st_ctimespec.tv_sec, s.st_ctimespec.tv_nsec = divmod(result.st_ctime_ns, 1_000_000_000)
        return 0
