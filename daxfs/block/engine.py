"""I/O engines: how the file backend's requests reach the kernel.

Theory of operation
-------------------
``FileBlockDevice`` turns each request into one ``IoOp`` -- the operations
io_uring has opcodes for -- and hands it to an engine with a completion
callback:

    READV      preadv(fd, buffers, offset)            IORING_OP_READV
    WRITEV     pwritev(fd, buffers, offset, flags)    IORING_OP_WRITEV (rw_flags)
               flags: RWF_DSYNC for FUA
    FDATASYNC  fdatasync(fd)                           IORING_OP_FSYNC (DATASYNC)
    FALLOCATE  fallocate(fd, mode, offset, length)     IORING_OP_FALLOCATE
               (WRITE_ZEROES: ZERO_RANGE; DISCARD: PUNCH_HOLE|KEEP_SIZE;
               a file system without them: zeros are written instead)

An op with ``datasync_after`` is followed by an fdatasync before it
completes (FUA of a WRITE_ZEROES or DISCARD; a linked SQE for io_uring).

``run_op`` executes one op synchronously and is the reference every engine
must agree with.  ``ThreadPoolEngine`` runs it on ``queue_depth`` worker
threads (the system calls release the GIL), so that many requests are in
flight from one submitting thread.  The io_uring engine (daxfs.block.uring:
a C extension with liburing, one submission and completion ring shared by
all threads) implements the same ``IoEngine`` interface and agrees with
``run_op``; ``choose_engine`` picks it when it can be set up and otherwise
names the thread pool and says why, which ``FileBlockDevice.engine`` and
``engine_reason`` report (and ``daxfs info`` prints).

Invariants
  1. ``done`` is called exactly once per submitted op, from any thread, with
     the bytes moved (READV/WRITEV: all of them unless the file ended or the
     kernel stopped making progress; FDATASYNC: 0; FALLOCATE: the length) or
     the exception that stopped it.
  2. A partial preadv/pwritev is continued from where it stopped; an op
     returns short only when a call moved nothing.
  3. ``close()`` returns when every submitted op has completed.
"""

from __future__ import annotations

import abc
import ctypes
import dataclasses
import enum
import errno
import logging
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from daxfs.errors import InvalidArgument, NotSupported

LOG = logging.getLogger("daxfs.block")

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_ZERO_CHUNK = 1 << 20
_zeros: mmap.mmap | None = None  # page-aligned zeros (usable with O_DIRECT), made on first use


class IoKind(enum.Enum):
    """The system call an op makes (each an io_uring opcode)."""

    READV = "readv"
    WRITEV = "writev"
    FDATASYNC = "fdatasync"
    FALLOCATE = "fallocate"


@dataclasses.dataclass(slots=True)
class IoOp:
    """One system call's worth of work for an engine."""

    kind: IoKind
    fd: int
    offset: int = 0
    buffers: list[memoryview] = dataclasses.field(default_factory=list)
    length: int = 0  # FALLOCATE: bytes
    flags: int = 0  # WRITEV: RWF_* flags; FALLOCATE: mode
    datasync_after: bool = False


Done = Callable[[int | BaseException], None]


class IoEngine(abc.ABC):
    """Executes IoOps asynchronously; see the module docstring."""

    #: a short name: "threads" or "io_uring"
    name: str
    #: ops that can be in flight at once
    queue_depth: int

    @abc.abstractmethod
    def submit(self, op: IoOp, done: Done) -> None:
        """Start ``op``; call ``done`` once with its result (invariant 1)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Wait for every op in flight, then release the engine (invariant 3)."""


#: the most requests an engine keeps in flight: daxfs's own bound, the io_uring
#: extension's ``_uring.MAX_ENTRIES`` (the same number, tests/block/test_uring.py; the
#: kernel's IORING_MAX_ENTRIES is 32768, and each private ring of that size would pin
#: its SQ and CQ arrays), and the thread pool is held to it too (a thread each)
MAX_QUEUE_DEPTH = 4096
#: what open_block (and so a mount by path through the block layer) keeps in flight
DEFAULT_QUEUE_DEPTH = 8


class ThreadPoolEngine(IoEngine):
    """``run_op`` on a pool of ``queue_depth`` threads."""

    name = "threads"

    def __init__(self, queue_depth: int = 8) -> None:
        """Raises: InvalidArgument (EINVAL): as ``check_queue_depth``."""
        check_queue_depth(queue_depth)
        self.queue_depth = queue_depth
        self._pool = ThreadPoolExecutor(max_workers=queue_depth, thread_name_prefix="daxfs-block")

    def submit(self, op: IoOp, done: Done) -> None:
        self._pool.submit(_run_then, op, done)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _run_then(op: IoOp, done: Done) -> None:
    result: int | BaseException
    try:
        result = run_op(op)
    except BaseException as exc:
        result = exc
    try:
        done(result)
    except BaseException:  # a bug in the completion: it must not vanish in the pool
        LOG.exception("completion of %s failed", op)
        raise


def check_queue_depth(queue_depth: object) -> int:
    """``queue_depth`` if it is an integer from 1 to MAX_QUEUE_DEPTH.

    Raises:
        InvalidArgument (EINVAL): anything else, naming the value and the bounds.
    """
    if (
        isinstance(queue_depth, bool)
        or not isinstance(queue_depth, int)
        or not 1 <= queue_depth <= MAX_QUEUE_DEPTH
    ):
        raise InvalidArgument(
            f"queue_depth must be an integer from 1 to {MAX_QUEUE_DEPTH}, not {queue_depth!r}"
        )
    return queue_depth


def check_engine(engine: str, queue_depth: int) -> None:
    """Raise unless ``engine`` and ``queue_depth`` are well formed (``choose_engine``'s checks,
    made before any engine is set up: "auto" never falls back over a bad queue depth).

    Raises:
        InvalidArgument (EINVAL): an unknown engine name; a queue depth outside
            1..MAX_QUEUE_DEPTH (``check_queue_depth``).
    """
    check_queue_depth(queue_depth)
    if engine not in ("auto", "threads", "io_uring"):
        raise InvalidArgument(f"engine must be 'auto', 'threads' or 'io_uring', not {engine!r}")


def choose_engine(engine: str, queue_depth: int) -> tuple[IoEngine, str]:
    """The engine for ``engine`` ("auto", "threads" or "io_uring") and why.

    "auto" sets up an io_uring (daxfs.block.uring) and falls back to the
    thread pool where that fails (the extension not built, no io_uring in
    the kernel, forbidden by kernel.io_uring_disabled or seccomp), saying why.

    Raises:
        As ``check_engine``; NotSupported (EOPNOTSUPP): "io_uring" asked for
        where it cannot be had, naming why.
    """
    check_engine(engine, queue_depth)
    if engine == "threads":
        return ThreadPoolEngine(queue_depth), "asked for (engine='threads')"
    from daxfs.block.uring import UringEngine  # uring imports this module

    try:
        uring = UringEngine(queue_depth)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if engine == "io_uring":
            raise NotSupported(f"the io_uring engine is not available: {why}") from exc
        return (
            ThreadPoolEngine(queue_depth),
            f"fallback: io_uring unavailable ({why}); a thread pool of preadv/pwritev",
        )
    if engine == "io_uring":
        return uring, "asked for (engine='io_uring')"
    return uring, "io_uring: one ring shared by all threads"


# -- the reference: one op, synchronously ------------------------------------------------


def run_op(op: IoOp) -> int:
    """Execute ``op`` in this thread; return the bytes moved (see invariant 1).

    Raises:
        OSError: from the system call, errno kept.
    """
    kind = op.kind
    if kind is IoKind.READV:
        return _transfer(op, write=False)
    if kind is IoKind.WRITEV:
        done = _transfer(op, write=True)
    elif kind is IoKind.FDATASYNC:
        os.fdatasync(op.fd)
        return 0
    else:
        done = _fallocate_or_zero(op)
    if op.datasync_after:
        os.fdatasync(op.fd)
    return done


def _transfer(op: IoOp, *, write: bool) -> int:
    views = [v for v in op.buffers if len(v)]
    total = sum(len(v) for v in views)
    done = 0
    flags = op.flags
    while done < total:
        if write:
            try:
                n = os.pwritev(op.fd, views, op.offset + done, flags)
            except OSError as exc:
                if not (flags and exc.errno == errno.EOPNOTSUPP):
                    raise
                flags = 0  # no RWF_DSYNC here: write, then fdatasync below
                op.datasync_after = True
                continue
        else:
            n = os.preadv(op.fd, views, op.offset + done)
        if n <= 0:
            break
        done += n
        views = advance_views(views, n)
    return done


_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) (os has only posix_fallocate).

    Raises:
        OSError: errno from the call.
    """
    if _fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _fallocate_or_zero(op: IoOp) -> int:
    try:
        fallocate(op.fd, op.flags, op.offset, op.length)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.ENODEV):
            raise
        _write_zeros(op.fd, op.offset, op.length)
    return op.length


def _write_zeros(fd: int, offset: int, length: int) -> None:
    global _zeros
    if _zeros is None:
        _zeros = mmap.mmap(-1, _ZERO_CHUNK, prot=mmap.PROT_READ)
    zeros = memoryview(_zeros)
    done = 0
    while done < length:
        n = min(length - done, _ZERO_CHUNK)
        op = IoOp(IoKind.WRITEV, fd, offset + done, [zeros[:n]])
        moved = _transfer(op, write=True)
        if moved < n:
            raise OSError(errno.EIO, f"writing zeros stopped after {done + moved} bytes")
        done += n


def advance_views(views: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first ``n`` bytes of a list of views."""
    out = []
    for view in views:
        if n >= len(view):
            n -= len(view)
            continue
        out.append(view[n:])
        n = 0
    return out
