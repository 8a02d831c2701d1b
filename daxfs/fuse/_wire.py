"""The wire tap: libfuse's reads and writes of /dev/fuse, seen by daxfs.

Why.  libfuse's high-level API knows an inode by its path.  Once the last name
of an open file is gone (unlinked, or renamed over), its node has no path, and
the kernel sends fstat, fchmod, fchown and futimens as GETATTR and SETATTR, and
fgetxattr, flistxattr, fsetxattr and fremovexattr as the xattr requests, by
node id alone (a file handle comes only with ftruncate): libfuse answers them
ESTALE before any callback.  The file is still open, so daxfs still has it: a
``File`` behind a handle, which holds its inode.

How.  libfuse 3.14's ``fuse_session_custom_io`` lets a filesystem do the
session's reads and writes of the FUSE device itself.  ``Tap.install`` (called
from ``init``, once the session is mounted and before any request but INIT's
reply) gives libfuse a ``read`` and a ``writev`` that do the system call and
look at the bytes:

* ``read`` notes, per thread, where the request it returns lies (libfuse's
  worker reads a request, processes it and replies from the same thread,
  before its next read);
* ``writev`` looks at the reply's header.  A successful OPEN or CREATE reply
  names the node id (the request's, or CREATE's entry) and the handle: the
  ``Handles`` learn that the handle is open on that node.  An ESTALE reply to
  a request ``BY_NODE`` (GETATTR, SETATTR, the four xattr requests) of a node
  that has an open handle is replaced by the answer of that handle's File:
  its attributes, after the SETATTR's changes (mode, owner, size, times, in
  libfuse's order), or the xattr call's answer (with the protocol's size
  query: a size of 0 asks for the length).  Any other reply is written as
  libfuse made it.

Nothing else changes: libfuse answers every request it can answer, and the
tap answers only what libfuse would have refused with ESTALE for a file the
kernel still holds open.  Splice reads are turned off (``init``) so that every
request arrives in memory, where ``read`` sees it.

Invariants:
1. A node id maps to the handles opened on it from the OPEN/CREATE reply (sent
   after the mapping exists) until their RELEASE; a node the kernel still holds
   open cannot be forgotten, so its id is not reused meanwhile.
2. The tap changes a reply only when it is ESTALE, its request (same unique) is
   one of ``BY_NODE``, and the node has an open handle; anything else it writes
   unchanged, also when looking at it fails (the failure is logged).
3. An error of the File's change is the reply's errno, as the callbacks' are.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
import threading
from typing import Any, Protocol

log = logging.getLogger("daxfs.fuse")

# fuse_kernel.h: opcodes, header layouts, setattr's valid bits
OP_GETATTR = 3
OP_SETATTR = 4
OP_OPEN = 14
OP_SETXATTR = 21
OP_GETXATTR = 22
OP_LISTXATTR = 23
OP_REMOVEXATTR = 24
OP_CREATE = 35
#: the requests whose ESTALE reply the tap may answer from an open File
BY_NODE = (OP_GETATTR, OP_SETATTR, OP_GETXATTR, OP_LISTXATTR, OP_SETXATTR, OP_REMOVEXATTR)
XATTR_IN = struct.Struct("<II")  # fuse_getxattr_in (size, padding), fuse_setxattr_in (size, flags)
IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, ext, pad
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
ATTR_OUT = struct.Struct("<QII" + "QQQQQQ" + "IIIIIIIIII")  # attr_valid(+nsec, dummy), fuse_attr
ENTRY_OUT_SIZE = 128  # struct fuse_entry_out (protocol 7.9+); fuse_open_out follows it
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FUSE_CAP_SPLICE_READ = 1 << 9
NOW = -1  # a time that is "now" (UTIME_NOW), for times_argument


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


READ = ctypes.CFUNCTYPE(
    ctypes.c_ssize_t,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
    use_errno=True,
)
WRITEV = ctypes.CFUNCTYPE(
    ctypes.c_ssize_t,
    ctypes.c_int,
    ctypes.POINTER(iovec),
    ctypes.c_int,
    ctypes.c_void_p,
    use_errno=True,
)


class fuse_custom_io(ctypes.Structure):
    _fields_ = [
        ("writev", WRITEV),
        ("read", READ),
        ("splice_receive", ctypes.c_void_p),
        ("splice_send", ctypes.c_void_p),
    ]


try:
    from daxfs.fuse import _tap as _native

    _NATIVE_MISSING = ""
except ImportError as _exc:  # not built: the Python read and writev (tap_engine says so)
    _native = None  # type: ignore[assignment]
    _NATIVE_MISSING = str(_exc) or type(_exc).__name__


def native_available() -> bool:
    """Whether daxfs.fuse._tap (the C read and writev) is built."""
    return _native is not None


def tap_engine() -> tuple[str, str]:
    """Which read and writev a mount's tap uses, and why: ``("C", why)`` when
    daxfs.fuse._tap is built, else ``("Python", why)``, the fallback, which
    works the same but enters Python three times per request instead of once
    (about twice the time of a stat or a 4 KiB read: bench/fuse_tap.py)."""
    if _native is not None:
        return "C", "daxfs.fuse._tap: Python is entered only for the replies the tap acts on"
    return "Python", (
        f"fallback: daxfs.fuse._tap is not built ({_NATIVE_MISSING}): the same tap in "
        "Python, about twice the time per request (bench/fuse_tap.py), on libfuse's "
        "single-threaded loop (daxfs.fuse._binding says why); pip install -e . builds it"
    )


_libc = ctypes.CDLL(None, use_errno=True)
_libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_libc.read.restype = ctypes.c_ssize_t
_libc.writev.argtypes = [ctypes.c_int, ctypes.POINTER(iovec), ctypes.c_int]
_libc.writev.restype = ctypes.c_ssize_t


class Handles(Protocol):
    """What the tap needs of the operations (DaxOperations)."""

    def opened(self, node: int, fh: int) -> None:
        """Handle ``fh`` (from OPEN or CREATE) is open on node id ``node``."""

    def node_stat(self, node: int) -> os.stat_result:
        """Attributes of the file open on ``node``; OSError(ESTALE) if none is."""

    def node_setattr(self, node: int, change: SetAttr) -> os.stat_result:
        """Apply ``change`` to the file open on ``node``, return its attributes."""

    def node_getxattr(self, node: int, name: str) -> bytes:
        """fgetxattr of the file open on ``node``."""

    def node_listxattr(self, node: int) -> list[str]:
        """flistxattr of the file open on ``node``."""

    def node_setxattr(self, node: int, name: str, value: bytes, flags: int) -> None:
        """fsetxattr of the file open on ``node``."""

    def node_removexattr(self, node: int, name: str) -> None:
        """fremovexattr of the file open on ``node``."""


def times_argument(atime: int | None, mtime: int | None) -> tuple[int | None, int | None] | None:
    """utimensat's two times as DaxOperations.utimens takes them.

    Each is nanoseconds, None (UTIME_OMIT: keep it) or NOW (UTIME_NOW).
    Returns None for "both now" (utime(path, None)); otherwise a pair where
    None still means keep it and a NOW became the current time.
    """
    if atime == NOW and mtime == NOW:
        return None
    if NOW in (atime, mtime):
        import time

        now = time.time_ns()
        atime = now if atime == NOW else atime
        mtime = now if mtime == NOW else mtime
    return (atime, mtime)


class SetAttr:
    """A SETATTR request's changes (fuse_setattr_in), in libfuse's order of application."""

    __slots__ = ("mode", "owner", "set_times", "size", "times")

    def __init__(self, body: bytes) -> None:
        (valid, _, _fh, size, _lock, atime, mtime, _ctime, atimensec, mtimensec, _ctimensec,
         mode, _, uid, gid, _) = SETATTR_IN.unpack_from(body)  # fmt: skip
        self.mode = mode if valid & FATTR_MODE else None
        self.owner: tuple[int, int] | None = None  # -1: leave that one
        if valid & (FATTR_UID | FATTR_GID):
            self.owner = (uid if valid & FATTR_UID else -1, gid if valid & FATTR_GID else -1)
        self.size = size if valid & FATTR_SIZE else None
        self.set_times = bool(valid & (FATTR_ATIME | FATTR_MTIME))
        self.times: tuple[int | None, int | None] | None = None  # None: both now
        if self.set_times:
            a: int | None = None
            m: int | None = None
            if valid & FATTR_ATIME_NOW:
                a = NOW
            elif valid & FATTR_ATIME:
                a = atime * 1_000_000_000 + atimensec
            if valid & FATTR_MTIME_NOW:
                m = NOW
            elif valid & FATTR_MTIME:
                m = mtime * 1_000_000_000 + mtimensec
            self.times = times_argument(a, m)


def attr_out(s: os.stat_result) -> bytes:
    """struct fuse_attr_out for ``s``, valid for 0 s (the mount's attr_timeout)."""
    asec, ans = divmod(s.st_atime_ns, 1_000_000_000)
    msec, mns = divmod(s.st_mtime_ns, 1_000_000_000)
    csec, cns = divmod(s.st_ctime_ns, 1_000_000_000)
    return ATTR_OUT.pack(
        0, 0, 0,
        s.st_ino, s.st_size, s.st_blocks, asec, msec, csec, ans, mns, cns,
        s.st_mode, s.st_nlink, s.st_uid, s.st_gid, 0, s.st_blksize, 0,
    )  # fmt: skip


class Tap:
    """libfuse's custom I/O for one session: read and writev of the FUSE device.

    ``native`` (the default when daxfs.fuse._tap is built) gives libfuse the C
    read and writev, which call ``look`` only for the replies it acts on; the
    Python ones here (``_read``, ``_writev``) are the readable reference and
    the fallback.
    """

    def __init__(self, handles: Handles, *, native: bool | None = None) -> None:
        self.handles = handles
        self._requests: dict[int, int] = {}  # native thread id -> its current request
        if native is None:
            native = _native is not None
        if native:
            if _native is None:
                raise ImportError("daxfs.fuse._tap is not built")
            writev, read = _native.functions()
            _native.set_hook(self.look)  # one session per process: one hook
            self._io = fuse_custom_io(WRITEV(writev), READ(read), None, None)
        else:
            self._io = fuse_custom_io(WRITEV(self._writev), READ(self._read), None, None)
        self.native = native

    def install(self, libfuse: Any, fuse: int) -> None:
        """Make the session of ``fuse`` (struct fuse *) read and write through the tap.

        Raises:
            OSError: libfuse refused (its errno).
        """
        libfuse.fuse_get_session.argtypes = [ctypes.c_void_p]
        libfuse.fuse_get_session.restype = ctypes.c_void_p
        libfuse.fuse_session_fd.argtypes = [ctypes.c_void_p]
        libfuse.fuse_session_custom_io.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(fuse_custom_io),
            ctypes.c_int,
        ]
        session = libfuse.fuse_get_session(fuse)
        fd = libfuse.fuse_session_fd(session)
        res = libfuse.fuse_session_custom_io(session, ctypes.byref(self._io), fd)
        if res != 0:
            raise OSError(-res, f"fuse_session_custom_io: {os.strerror(-res)}")

    # -- the two calls libfuse makes (the Python reference of _tap.c) -----------------

    def _read(self, fd: int, buf: int | None, size: int, _userdata: Any) -> int:
        n = int(_libc.read(fd, buf, size))  # errno stays in ctypes' copy for libfuse
        if n >= IN_HEADER.size and buf is not None:
            self._requests[threading.get_ident()] = buf
        return n

    def _writev(self, fd: int, iov: Any, count: int, _userdata: Any) -> int:
        request = self._requests.get(threading.get_ident())
        if request is not None and count >= 1 and wanted(request, iov[0].iov_base):
            parts = (ctypes.string_at(iov[i].iov_base, iov[i].iov_len) for i in range(count))
            reply = b"".join(parts)
            answer = self.look(request, reply)
            if answer is not None:
                try:
                    return os.write(fd, answer)
                except OSError as exc:
                    ctypes.set_errno(exc.errno or errno.EIO)
                    return -1
        return int(_libc.writev(fd, iov, count))

    # -- what the tap does with a reply ------------------------------------------------

    def look(self, request: int, reply: bytes) -> bytes | None:
        """The reply to send for the request at address ``request`` instead of
        ``reply`` (libfuse's, a reply ``wanted`` chose); None: libfuse's."""
        try:
            return self._look(request, reply)
        except Exception:  # invariant 2: a bug here must not lose the reply
            log.exception("daxfs.fuse: looking at a reply failed; sent as it was")
            return None

    def _look(self, request: int, reply: bytes) -> bytes | None:
        _, error, unique = OUT_HEADER.unpack_from(reply)
        length, opcode, _, node, *_ = IN_HEADER.unpack(ctypes.string_at(request, IN_HEADER.size))
        body = reply[OUT_HEADER.size :]
        if error == 0:  # OPEN or CREATE: learn the handle's node
            if opcode == OP_OPEN:
                (fh,) = struct.unpack_from("<Q", body)
            else:
                (node,) = struct.unpack_from("<Q", body)
                (fh,) = struct.unpack_from("<Q", body, ENTRY_OUT_SIZE)
            self.handles.opened(node, fh)
            return None
        arg = ctypes.string_at(request + IN_HEADER.size, length - IN_HEADER.size)
        try:  # ESTALE to a request by node alone
            body = self._answer(opcode, node, arg)
        except OSError as exc:
            code = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else errno.EIO
            if code == errno.ESTALE:
                return None  # no open handle: libfuse's ESTALE stands
            return OUT_HEADER.pack(OUT_HEADER.size, -code, unique)
        return OUT_HEADER.pack(OUT_HEADER.size + len(body), 0, unique) + body

    def _answer(self, opcode: int, node: int, arg: bytes) -> bytes:
        """The reply's body for ``opcode`` on ``node`` (``arg``: the request's body)."""
        h = self.handles
        if opcode == OP_GETATTR:
            return attr_out(h.node_stat(node))
        if opcode == OP_SETATTR:
            return attr_out(h.node_setattr(node, SetAttr(arg[: SETATTR_IN.size])))
        if opcode == OP_REMOVEXATTR:  # its body is the name alone
            h.node_removexattr(node, _name(arg))
            return b""
        size, flags = XATTR_IN.unpack_from(arg)
        if opcode == OP_SETXATTR:
            name = _name(arg[XATTR_IN.size :])
            start = XATTR_IN.size + len(name.encode(errors="surrogateescape")) + 1
            h.node_setxattr(node, name, arg[start : start + size], flags)
            return b""
        if opcode == OP_GETXATTR:
            data = h.node_getxattr(node, _name(arg[XATTR_IN.size :]))
        else:  # OP_LISTXATTR
            data = b"".join(
                n.encode(errors="surrogateescape") + b"\0" for n in h.node_listxattr(node)
            )
        if size == 0:  # the caller asks for the size (fuse_getxattr_out)
            return XATTR_IN.pack(len(data), 0)
        if len(data) > size:
            raise OSError(errno.ERANGE, f"node {node}: {len(data)} bytes, buffer of {size}")
        return data


def _name(arg: bytes) -> str:
    """The NUL-terminated attribute name at the start of ``arg``."""
    return arg[: arg.index(b"\0")].decode(errors="surrogateescape")


def wanted(request: int, reply_header: int) -> bool:
    """Whether the tap looks at this reply (the addresses of the request and of the
    reply's header): OPEN or CREATE done, or a request BY_NODE refused ESTALE."""
    _, error, unique = OUT_HEADER.unpack(ctypes.string_at(reply_header, OUT_HEADER.size))
    if error not in (0, -errno.ESTALE):
        return False
    _, opcode, req_unique = struct.unpack("<IIQ", ctypes.string_at(request, 16))
    if req_unique != unique:
        return False
    if error == 0:
        return opcode in (OP_OPEN, OP_CREATE)
    return opcode in BY_NODE


def disable_splice_read(conn: Any) -> None:
    """Every request through read() into memory, where the tap sees it."""
    conn.want &= ~FUSE_CAP_SPLICE_READ


__all__ = [
    "Handles",
    "SetAttr",
    "Tap",
    "attr_out",
    "disable_splice_read",
    "native_available",
    "tap_engine",
    "times_argument",
    "wanted",
]
